/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Key generation for enrolment: a new key where its provider keeps it (a PEM
 * file, a PKCS#11 token, a TPM) and a PKCS#10 certificate request signed by
 * that key through the provider (so a token or TPM key never leaves it).
 * Used by `m2mvpn keygen` and by the management client (enrolment, renewal).
 *
 * Errors: 0 or negative M2MVPN_E_*; err/err_len get one line, no secret.
 */
#ifndef M2MVPN_CRED_KEYGEN_H
#define M2MVPN_CRED_KEYGEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cred.h"

typedef enum keygen_provider { KEYGEN_FILE, KEYGEN_PKCS11, KEYGEN_TPM } keygen_provider;

typedef struct keygen_request {
    keygen_provider provider;
    bool rsa;                  /**< RSA 2048; default ECC P-256 */
    const char *subject;       /**< "/CN=dev1.m2m.test/O=m2m" ('\' escapes '/') */
    /** file: the new PEM private key (PKCS#8, mode 0600); tpm: the TSS2 PEM key
     *  file (NULL with tpm_handle). Never replaces an existing file. */
    const char *out;
    uint32_t tpm_handle;       /**< tpm: make the key persistent here instead (0: no) */
    const char *tpm_tcti;      /**< tpm: TCTI configuration, NULL: default */
    const char *pkcs11_module; /**< pkcs11: module */
    const char *pkcs11_uri;    /**< pkcs11: token= and object= (the label) [; id=] */
    /** pkcs11: the user PIN (required); tpm: the key's authValue (optional);
     *  file: a passphrase to encrypt the key with (AES-256, optional).
     *  Copied where needed and wiped. */
    const char *pin;
    size_t pin_len;
} keygen_request;

/**
 * Make the key and a CSR for it. *ret_csr_pem: a new PEM "CERTIFICATE
 * REQUEST" (free()), signed with SHA-256 (ECDSA or RSA PKCS#1 v1.5).
 * Errors: INVAL (missing field, bad subject), IO (file exists or cannot be
 * written; token or TPM not present), PIN, CERT, NOTSUPP (provider not in
 * this build), CRYPTO, NOMEM.
 */
int keygen_run(const keygen_request *rq, char **ret_csr_pem, char *err, size_t err_len);

/** A CSR for the key of an open provider (it must offer cred_spki()), signed
 *  by the provider. */
int keygen_csr(cred_provider *p, const char *subject, char **ret_csr_pem, char *err, size_t err_len);

/** Write `len` bytes to a new file `path` (mode `mode`) atomically: a
 *  temporary file, fsync, then linked into place; an existing `path` is an
 *  error (IO "... exists: not replaced"). */
int keygen_write_new_file(const char *path, const void *data, size_t len, unsigned mode,
                          char *err, size_t err_len);

#endif
