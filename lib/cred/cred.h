/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Credential providers: where our certificate chain and private key come from.
 * One interface for every source, so the IKE engine never sees a key:
 *   "file"    PEM certificate(+chain) with PEM key, or PKCS#12   (cred_file.c)
 *   "pkcs11"  key and certificate on a smartcard/HSM, libp11     (cred_pkcs11.c)
 *   "tpm"     key inside a TPM 2.0, tpm2-tss ESYS                (cred_tpm.c)
 *   "machine" the same as "file" with the key bound to this machine (cred_machine.c)
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
    /** Optional. What the provider holds, for status and messages, never a
     *  secret: "token m2m, key dev1", "TPM key dev1.tss2.pem". */
    void (*describe)(void *ctx, char *buf, size_t len);
    /** Optional. True once the device went away (token removed, TPM not
     *  answering): the caller frees the provider and opens it again for its
     *  next attempt (the failed call returned M2MVPN_E_IO saying so). */
    bool (*lost)(void *ctx);
    /** Optional. DER SubjectPublicKeyInfo of the key (for a CSR) into
     *  out[cap]. E_PIN if not readable before unlocking. */
    int (*spki)(void *ctx, uint8_t *out, size_t cap, size_t *ret_len, char *err, size_t err_len);
    /** Optional. The private key as an OpenSSL key that signs through the
     *  provider (a new reference; NULL while locked), for OpenSSL's own
     *  protocols (management: CMP proof of possession, mutual TLS). */
    struct evp_pkey_st *(*evp_key)(void *ctx);
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

/**
 * Open the PKCS#11 provider (auth.cert.source "pkcs11", built with libp11;
 * without it: NOTSUPP "this build has no PKCS#11 support").
 *  - `module`: the PKCS#11 module (path or name for the loader); `uri`: an
 *    RFC 7512 URI (p11_uri.h) that selects the token and, by object label
 *    and/or id, the private key and the certificate next to it (same label
 *    or CKA_ID). The key never leaves the token: every signature is made by
 *    it (C_Sign: CKM_ECDSA, CKM_RSA_PKCS; RSA-PSS is encoded here and signed
 *    with CKM_RSA_X_509).
 *  - `pin` as for cred_file_open(): tried at most once (one C_Login), wrong
 *    -> E_PIN "wrong PIN for token <label>", nothing returned; none given and
 *    the token needs one -> returned locked (cred_pin_needed()).
 * The token keeps the login (and libp11, inside, a copy of the PIN for
 * re-login after fork()) until the provider is freed.
 * Errors: INVAL (URI), CERT (module cannot be loaded, no such key or
 * certificate, mismatch), IO (no token matching the URI is present: a later
 * attempt may find it), PIN (wrong, or locked token), NOMEM.
 */
int cred_pkcs11_open(const char *module, const char *uri, const char *pin, size_t pin_len,
                     cred_provider **ret, char *err, size_t err_len);

/**
 * Open the TPM 2.0 provider (auth.cert.source "tpm", built with tpm2-tss;
 * without it: NOTSUPP).
 *  - `key`: a TSS2 PEM key file ("-----BEGIN TSS2 PRIVATE KEY-----", parent
 *    the owner hierarchy's primary key made from the usual ECC P-256 storage
 *    template, or a persistent parent handle) or a persistent key handle
 *    "0x81xxxxxx"; `cert_file`: PEM certificate (+ chain) of that key.
 *  - `tcti`: Tss2_TctiLdr configuration ("swtpm:host=127.0.0.1,port=2321",
 *    "device:/dev/tpmrm0", "tabrmd"), NULL: the system's default.
 *  - `pin`: the key's authValue. Tried at most once by a test signature, so a
 *    wrong one costs exactly one dictionary-attack count and is never
 *    retried (E_PIN "wrong PIN for TPM key <key>"; "TPM in dictionary-attack
 *    lockout" if it is). A key file with emptyAuth needs none; one without
 *    and no pin: returned locked. A handle without pin: empty authValue.
 * The key stays loaded with its authValue inside ESYS (which the TPM
 * needs for every signature) until the provider is freed, which clears it.
 * Errors: INVAL, CERT (key file malformed, certificate missing or not for
 * this key), IO (TPM not reachable), PIN, NOMEM.
 */
int cred_tpm_open(const char *key, const char *cert_file, const char *tcti,
                  const char *pin, size_t pin_len,
                  cred_provider **ret, char *err, size_t err_len);

/** The provider's key as an OpenSSL EVP_PKEY (see cred_ops.evp_key; keep
 *  the provider open while it is used), or NULL if this provider cannot
 *  give one (then err says so). */
struct evp_pkey_st *cred_evp_key(cred_provider *p, char *err, size_t err_len);

/** A key holding only k's public half (its SubjectPublicKeyInfo copied),
 *  independent of any provider or token; NULL if k is NULL or on failure. */
struct evp_pkey_st *cred_public_copy(struct evp_pkey_st *k);

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
/** describe(): "" if the provider has none. Always NUL-terminates. */
void cred_describe(cred_provider *p, char *buf, size_t len);
/** lost(): false if the provider has none. */
bool cred_lost(cred_provider *p);
/** spki(): NOTSUPP if the provider has none. */
int cred_spki(cred_provider *p, uint8_t *out, size_t cap, size_t *ret_len, char *err, size_t err_len);

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
