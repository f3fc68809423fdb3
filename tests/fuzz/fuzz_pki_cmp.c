/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer target for the management server's CMP handler (server/pki):
 * any bytes as the body of POST /.well-known/cmp. The scripted store knows
 * one token. Invariants: no crash; an answer is a PKIMessage; nothing gets
 * past the MAC check (the enrol and issued hooks are never reached, since the
 * fuzzer cannot compute the token's MAC), nor past the signature check of KUR
 * and RR (cert_ok, renewed and revoke need a certificate of the CA, whose key
 * the fuzzer does not have).
 */
#include <openssl/cmp.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pki_srv.h"

static const unsigned char token_key[32] = "fuzz-token-key-fuzz-token-key-!";

static int h_token_secret(void *ctx, const char *id, char *secret, size_t cap, char *reason, size_t rcap)
{
    (void)ctx;
    char out[44];
    if (strcmp(id, "00112233aabbccdd") != 0 || cap < sizeof(out)
        || pki_token_secret(token_key, sizeof(token_key), id, out) != 0) {
        snprintf(reason, rcap, "unknown enrolment token");
        return -1;
    }
    memcpy(secret, out, sizeof(out));
    return 0;
}

static int h_enrol(void *ctx, const char *id, const unsigned char *spki, size_t spki_len, pki_enrol_verdict *v,
                   char *device_id, size_t idcap, int *check_after, char *reason, size_t rcap)
{
    (void)ctx; (void)id; (void)spki; (void)spki_len; (void)v; (void)device_id; (void)idcap;
    (void)check_after; (void)reason; (void)rcap;
    abort(); /* reached without the token's MAC */
}

static int h_issued(void *ctx, const char *id, const char *device_id, X509 *cert)
{
    (void)ctx; (void)id; (void)device_id; (void)cert;
    abort();
}

static int h_cert_ok(void *ctx, const char *device_id, const char *serial_hex, char *reason, size_t rcap)
{
    (void)ctx; (void)device_id; (void)serial_hex; (void)reason; (void)rcap;
    abort(); /* reached without a device certificate of the CA */
}

static int h_renewed(void *ctx, const char *device_id, const char *old_serial_hex, X509 *cert)
{
    (void)ctx; (void)device_id; (void)old_serial_hex; (void)cert;
    abort();
}

static int h_revoke(void *ctx, const char *device_id, const char *serial_hex, int crl_reason, char *reason,
                    size_t rcap)
{
    (void)ctx; (void)device_id; (void)serial_hex; (void)crl_reason; (void)reason; (void)rcap;
    abort();
}

static const pki_cmp_hooks hooks = {h_token_secret, h_enrol, h_issued, h_cert_ok, h_renewed, h_revoke};

/* A self-signed CA written to a temporary folder once (pki_signer_open reads files). */
static pki_signer *ca(void)
{
    static pki_signer *s;
    if (s)
        return s;
    char dir[] = "/tmp/fuzz_pki_cmp.XXXXXX", crt[64], key[64], loc[80], err[256];
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *x = X509_new();
    if (!mkdtemp(dir) || !k || !x)
        abort();
    X509_set_version(x, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC, (const unsigned char *)"fuzz CA", -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, k);
    if (!X509_sign(x, k, EVP_sha256()))
        abort();
    snprintf(crt, sizeof(crt), "%s/ca.crt", dir);
    snprintf(key, sizeof(key), "%s/ca.key", dir);
    FILE *f = fopen(crt, "w");
    if (!f || !PEM_write_X509(f, x))
        abort();
    fclose(f);
    f = fopen(key, "w");
    if (!f || !PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL))
        abort();
    fclose(f);
    snprintf(loc, sizeof(loc), "file:%s", key);
    if (pki_signer_open(&s, crt, loc, err, sizeof(err)) != 0)
        abort();
    unlink(crt);
    unlink(key);
    rmdir(dir);
    X509_free(x);
    EVP_PKEY_free(k);
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned char *resp = NULL;
    size_t len = 0;
    if (pki_cmp_handle(ca(), &hooks, NULL, 30, "fuzz", data, size, &resp, &len) == 0) {
        const unsigned char *p = resp;
        OSSL_CMP_MSG *m = d2i_OSSL_CMP_MSG(NULL, &p, (long)len);
        if (!m || p != resp + len)
            abort();
        OSSL_CMP_MSG_free(m);
    } else if (resp || len) {
        abort();
    }
    OPENSSL_free(resp);
    return 0;
}
