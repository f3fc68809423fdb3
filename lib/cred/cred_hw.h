/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Inside lib/cred only: what keygen.c needs from the hardware providers
 * (cred_pkcs11.c, cred_tpm.c). Same error and PIN rules as cred.h; each
 * returns NOTSUPP when the build lacks the provider.
 */
#ifndef M2MVPN_CRED_CRED_HW_H
#define M2MVPN_CRED_CRED_HW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/types.h>

#include "cred.h"

/** As cred_pkcs11_open(), for a key that has no certificate yet: chain()
 *  fails with CERT, spki() and sign() work. The PIN is required. */
int cred_pkcs11_open_key(const char *module, const char *uri, const char *pin, size_t pin_len,
                         cred_provider **ret, char *err, size_t err_len);

/** Store `cert` (DER) on the token of provider p (made by
 *  cred_pkcs11_open_key), with the key's label and CKA_ID, so that
 *  cred_pkcs11_open() finds it next to the key. Errors: CERT, IO, NOMEM. */
int cred_pkcs11_store_cert(cred_provider *p, const uint8_t *der, size_t len, char *err, size_t err_len);

/** Store `cert` (DER) on the token `uri` names, next to the one private key
 *  the URI names (object= and/or id=), with that key's CKA_LABEL and CKA_ID,
 *  then delete every other certificate object of that key (public key
 *  key_pub) with that label or that id (a non-empty one): a renewed
 *  certificate of the same key replaces the old one (created first, so a
 *  stop in between leaves both; cred_pkcs11_open takes the newest that
 *  fits the key). key_pub: the public key of that private key (as the
 *  caller opened it); a certificate of another public key is refused (CERT,
 *  nothing changed). One C_Login with `pin`. Errors: INVAL, IO (no such
 *  token), PIN, CERT. */
int cred_pkcs11_replace_cert(const char *module, const char *uri, const char *pin, size_t pin_len,
                             const uint8_t *der, size_t len, EVP_PKEY *key_pub, char *err, size_t err_len);

/**
 * Generate a key pair on the token that `uri` names (token=...; object= the
 * label, id= optional: 8 random bytes otherwise): ECC P-256, or RSA 2048 if
 * `rsa`. The private key is CKA_SENSITIVE, not CKA_EXTRACTABLE, CKA_PRIVATE,
 * for signing only. One C_Login with `pin` (wrong: E_PIN, not retried).
 * Errors: INVAL (URI without object), CERT (module, a key with that label
 * or id exists already, generation refused), NOTSUPP (the token cannot
 * generate such keys: CKR_FUNCTION_NOT_SUPPORTED, CKR_MECHANISM_INVALID),
 * IO (no such token), PIN.
 */
int cred_pkcs11_generate(const char *module, const char *uri, const char *pin, size_t pin_len,
                         bool rsa, char *err, size_t err_len);

/** As cred_tpm_open() for a key without certificate (cert_file NULL): chain()
 *  fails with CERT, spki() and sign() work. */
/**
 * The objects on the token `uri` names (its token attributes; its object=
 * and id= are not used) labelled `label` (NULL: any) whose CKA_ID is `id`
 * (other_id: is not `id`; id NULL: any; label and id not both NULL): each
 * gets CKA_LABEL `new_label`, or is destroyed when new_label is NULL;
 * private keys last. *ret_n (may be NULL): how many private keys matched.
 * One C_Login with `pin`. Errors: INVAL, IO (no such token), PIN, CERT.
 */
int cred_pkcs11_objects(const char *module, const char *uri, const char *pin, size_t pin_len, const char *label,
                        const uint8_t *id, size_t id_len, bool other_id, const char *new_label, size_t *ret_n,
                        char *err, size_t err_len);

/*  A key file opened so is not held in the TPM: once its authValue is
 *  accepted, its context is saved (TPM2_ContextSave) and the object flushed;
 *  each signature loads it back (no parent or primary key needed) and
 *  flushes it again. So two such keys (a renewal's current and new key) fit
 *  a TPM with few object slots (swtpm: three) beside a loaded one. */
int cred_tpm_open_key(const char *key, const char *tcti, const char *pin, size_t pin_len,
                      cred_provider **ret, char *err, size_t err_len);

/**
 * The public key of the TSS2 PEM key file `path`, read from the file alone
 * (no TPM): *ret (EVP_PKEY_free()). Errors: IO, CERT (not a TSS2 key, or a
 * malformed or unsupported public part), NOMEM; NOTSUPP without TPM support.
 */
int cred_tpm_key_public(const char *path, EVP_PKEY **ret, char *err, size_t err_len);

/**
 * Create a signing key inside the TPM (ECC P-256, or RSA 2048 if `rsa`;
 * fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | sign: it can
 * never be duplicated or leave the TPM) under the owner hierarchy's ECC
 * storage primary key, with authValue `pin` (NULL: none, emptyAuth).
 * `handle` 0: *ret_pem receives the TSS2 PEM key file text (free()); else the
 * key is made persistent at `handle` (0x81000000..0x81ffffff) and *ret_pem
 * is NULL. Errors: INVAL, IO (TPM not reachable), CERT (the TPM refused, e.g.
 * the handle is taken), NOMEM.
 */
int cred_tpm_generate(const char *tcti, bool rsa, const char *pin, size_t pin_len,
                      uint32_t handle, char **ret_pem, char *err, size_t err_len);

#endif
