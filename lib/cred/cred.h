/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Credential providers: where our certificate chain and private key come from.
 * One interface for every source, so the IKE engine never sees a key:
 *   "file"    PEM certificate(+chain) with PEM key, or PKCS#12   (cred_file.c)
 *   "machine" the same with the key bound to this machine       (cred_machine.c)
 *   later:    "pkcs11" (smartcard/HSM), "tpm" (TPM 2.0)
 * A provider signs; the key may be unreadable (smartcard, TPM).
 *
 * PIN model (DESIGN.md §8: a wrong PIN is never retried):
 *  - A provider may start locked (encrypted key, protected .p12, smartcard).
 *    cred_pin_needed() says so; operations that need what is locked return
 *    M2MVPN_E_PIN with "PIN required for <what>" so the engine can emit
 *    PIN_REQUIRED.
 *  - cred_set_pin() tries the PIN once. The PIN is copied and wiped before the
 *    call returns (the provider never keeps it). A wrong PIN returns
 *    M2MVPN_E_PIN with "wrong PIN for <what>"; the provider stays locked and
 *    does not try again by itself.
 *
 * PSK is not a provider: the engine computes it with the PRF (RFC 7296 §2.15).
 *
 * Threads: a provider is used by one thread at a time (the engine thread).
 * Errors: 0 or negative M2MVPN_E_*; `err`/`err_len` (may be NULL) receive a
 * one-line reason without secrets.
 */
#ifndef M2MVPN_CRED_CRED_H
#define M2MVPN_CRED_CRED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto/pki.h"

/** The operations every provider implements. `ctx` is the provider's own state. */
typedef struct cred_ops {
    const char *name;   /**< "file", "pkcs11", "tpm", ... */
    /** Certificate chain, end-entity first (borrowed, valid until destroy).
     *  E_PIN if the chain itself is locked (e.g. inside a protected .p12). */
    int (*chain)(void *ctx, pki_cert *const **ret_certs, size_t *ret_n,
                 char *err, size_t err_len);
    /** Key type and size; E_PIN if not known before unlocking. */
    int (*key_info)(void *ctx, pki_key_type *ret_type, unsigned *ret_bits,
                    char *err, size_t err_len);
    bool (*pin_needed)(void *ctx);
    /** Try this PIN once (see the PIN model above). */
    int (*set_pin)(void *ctx, const char *pin, size_t len, char *err, size_t err_len);
    /** Native signature (RSA bytes / DER ECDSA / 64 bytes Ed25519) of `data`
     *  (hashed inside with the scheme's hash) into sig[cap]. */
    int (*sign)(void *ctx, pki_sig_scheme scheme, const uint8_t *data, size_t len,
                uint8_t *sig, size_t cap, size_t *ret_len, char *err, size_t err_len);
    /** Free everything, wiping key material. */
    void (*destroy)(void *ctx);
} cred_ops;

/** A provider: operations plus context. Made by a cred_*_open() function. */
typedef struct cred_provider {
    const cred_ops *ops;
    void *ctx;
} cred_provider;

/* ---------------------------------------------------------------- opening */

/**
 * Open the file provider (profile auth.cert.source "file").
 *  - `cert_file` is a PEM file (certificate, optionally followed by its chain)
 *    with `key_file` a PEM private key (PKCS#8, traditional, or encrypted with
 *    the PIN); or, with `key_file` NULL, a PKCS#12 (.p12/.pfx) holding key,
 *    certificate and chain (also recognised by content if key_file is NULL).
 *  - `pin`/`pin_len`: the profile's cert.pin or NULL. If given, it is tried as
 *    by cred_set_pin() (copied, wiped; wrong -> E_PIN "wrong PIN for <file>",
 *    nothing returned). If not given and one is needed, the provider is
 *    returned locked (cred_pin_needed() true).
 *  - The key must match the end-entity certificate (E_CERT "private key does
 *    not match certificate <subject>"); RSA, ECDSA P-256/384/521 and
 *    Ed25519 keys.
 * Errors: INVAL, IO (file unreadable), CERT (no certificate/key, mismatch,
 * unsupported key), PIN, NOMEM. On error *ret is untouched.
 */
int cred_file_open(const char *cert_file, const char *key_file,
                   const char *pin, size_t pin_len,
                   cred_provider **ret, char *err, size_t err_len);

/**
 * The file provider with the private key given in memory (PEM or DER, maybe
 * encrypted with the PIN) instead of a key file; `key_name` names it in
 * messages. The bytes are copied (and wiped with the provider).
 */
int cred_file_open_key_mem(const char *cert_file, const uint8_t *key, size_t key_len, const char *key_name,
                           const char *pin, size_t pin_len,
                           cred_provider **ret, char *err, size_t err_len);

/**
 * Machine-bound keys (auth.cert.source "machine", cred_machine.c, which
 * describes the file format and the fingerprint sources).
 *  - `sources`: comma-separated, e.g. "machine-id,mac:eth0"; NULL in
 *    cred_machine_bind() means cred_machine_default_sources.
 *  - cred_machine_bind(): encrypt a PEM key; *ret (malloc'ed) is the file.
 *  - cred_machine_unbind(): decrypt; `want_sources` (or NULL) must equal the
 *    file's list. A fingerprint that does not match: E_CERT "<name> is
 *    bound to another machine ...". *ret is NUL-terminated, *ret_len + 1
 *    bytes: wipe it (secure_free) after use.
 *  - cred_machine_open(): the file provider with the unbound key.
 * Errors: INVAL (bad source list), CERT, IO, CRYPTO, NOMEM.
 */
extern const char *const cred_machine_default_sources;
int cred_machine_check_sources(const char *sources, char *err, size_t err_len);
int cred_machine_bind(const uint8_t *key_pem, size_t key_len, const char *sources, uint8_t **ret,
                      size_t *ret_len, char *err, size_t err_len);
int cred_machine_unbind(const uint8_t *data, size_t len, const char *name, const char *want_sources,
                        uint8_t **ret, size_t *ret_len, char *err, size_t err_len);
int cred_machine_open(const char *cert_file, const char *bound_key_file, const char *want_sources,
                      const char *pin, size_t pin_len, cred_provider **ret, char *err, size_t err_len);

/** Destroy a provider (wipes its secrets). NULL is fine. */
void cred_free(cred_provider *p);

/* ------------------------------------------------- calls (thin wrappers) */

const char *cred_name(const cred_provider *p);
int cred_chain(cred_provider *p, pki_cert *const **ret_certs, size_t *ret_n,
               char *err, size_t err_len);
int cred_key_info(cred_provider *p, pki_key_type *ret_type, unsigned *ret_bits,
                  char *err, size_t err_len);
bool cred_pin_needed(cred_provider *p);
int cred_set_pin(cred_provider *p, const char *pin, size_t len, char *err, size_t err_len);
int cred_sign(cred_provider *p, pki_sig_scheme scheme, const uint8_t *data, size_t len,
              uint8_t *sig, size_t cap, size_t *ret_len, char *err, size_t err_len);

/**
 * AUTH data for our AUTH payload (RFC 7296 §2.15 / RFC 4754 / RFC 7427):
 * signs `signed_octets` with `scheme` and formats the result for `method`
 * (see pki_auth_data_format(); choose both with pki_choose_auth()).
 * out[cap] should hold PKI_AUTH_MAX bytes.
 * Errors: those of cred_sign(); INVAL if the scheme does not fit method/key.
 */
int cred_sign_auth(cred_provider *p, pki_auth_method method, pki_sig_scheme scheme,
                   const uint8_t *signed_octets, size_t signed_len,
                   uint8_t *out, size_t cap, size_t *ret_len, char *err, size_t err_len);

#endif
