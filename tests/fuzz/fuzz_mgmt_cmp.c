/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer target for the device's CMP answer handling (lib/mgmt): the
 * input is the DER PKIMessage the "server" answers to every request of an
 * enrolment (IR, then pollReq or certConf), run through the same client
 * code and checks as a real enrolment (mgmt_cmp_check_answer); then the
 * same bytes as the answer to a decommissioning RR signed with a device
 * certificate (mgmt_cmp_check_rr_answer: the extraCerts walk that looks
 * for the device CA, then the RR's checks).
 */
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdint.h>
#include <stdlib.h>

#include "mgmt/mgmt.h"

static EVP_PKEY *dev_key;
static X509 *dev_cert;

/* One self-issued device certificate for the whole run. */
static void setup(void)
{
    if (dev_cert)
        return;
    dev_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *c = X509_new();
    if (!dev_key || !c)
        abort();
    X509_set_version(c, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(c), 9);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(c), "CN", MBSTRING_ASC,
                               (const unsigned char *)"dev-0123456789abcdef", -1, -1, 0);
    X509_set_issuer_name(c, X509_get_subject_name(c));
    X509_gmtime_adj(X509_getm_notBefore(c), -3600);
    X509_gmtime_adj(X509_getm_notAfter(c), 86400);
    X509_set_pubkey(c, dev_key);
    if (X509_sign(c, dev_key, EVP_sha256()) <= 0)
        abort();
    dev_cert = c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    setup();
    mgmt_cmp_check_answer(data, size, err, sizeof(err));
    if (mgmt_cmp_check_rr_answer(data, size, dev_key, dev_cert, err, sizeof(err)) == 0)
        abort(); /* no fixed bytes can answer a transaction with fresh nonces */
    return 0;
}
