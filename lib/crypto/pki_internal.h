/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Helpers shared by the pki*.c files and the credential providers (lib/cred).
 * Not a contract for other modules: those use pki.h only.
 */
#ifndef M2MVPN_CRYPTO_PKI_INTERNAL_H
#define M2MVPN_CRYPTO_PKI_INTERNAL_H

#include "pki.h"

#include <openssl/evp.h>
#include <openssl/x509.h>

/* printf into err[err_len] if err is non-NULL. */
void pki_set_err(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The last OpenSSL error reason as text into buf; clears the error queue. */
const char *pki_openssl_reason(char *buf, size_t len);

/* Key type/bits of an OpenSSL key (NULL -> UNKNOWN). */
pki_key_type pki_pkey_type(const EVP_PKEY *pk, unsigned *bits);

/* Read a whole (bounded) file. *ret is malloc'ed; the caller frees (wiping it
 * first if it may hold a key). Errors: IO, CERT (too large), NOMEM. */
int pki_read_file(const char *path, uint8_t **ret, size_t *ret_len, char *err, size_t err_len);
/* Does the buffer contain a PEM "-----BEGIN " line? */
bool pki_looks_pem(const uint8_t *data, size_t len);

/* The OpenSSL objects of a certificate (borrowed, live as long as `c`). */
X509 *pki_cert_x509(const pki_cert *c);
EVP_PKEY *pki_cert_pubkey(const pki_cert *c);

/* Wrap an X509 (ownership taken, also on failure). NULL on NOMEM. */
pki_cert *pki_cert_wrap(X509 *x);
/* All certificates of a PEM buffer (other PEM blocks skipped) or one DER
 * certificate; `what` names the source in errors. */
int pki_certs_from_memory(const uint8_t *data, size_t len, const char *what,
                          pki_cert ***ret, size_t *ret_n, char *err, size_t err_len);

/* X.500 name as "C=CH, O=m2m, CN=gw". */
void pki_name_text(const X509_NAME *name, char *buf, size_t len);

/* The hash of a scheme (EVP_sha256() ...); NULL for NONE and for Ed25519,
 * which hashes inside (check pki_scheme_valid() first). */
const EVP_MD *pki_scheme_md(pki_sig_scheme s);
bool pki_scheme_valid(pki_sig_scheme s);
/* Set RSA padding/PSS parameters of a sign/verify context for `s`. */
bool pki_scheme_set_padding(EVP_PKEY_CTX *pctx, pki_sig_scheme s);
bool pki_scheme_is_rsa(pki_sig_scheme s);
bool pki_scheme_is_pss(pki_sig_scheme s);
bool pki_scheme_is_ecdsa(pki_sig_scheme s);

#endif
