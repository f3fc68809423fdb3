/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TSS2 PEM key files ("-----BEGIN TSS2 PRIVATE KEY-----"): the format that
 * tpm2-tss-engine and tpm2-openssl read and write for a key that lives in a
 * TPM, wrapped by its parent. The DER inside is
 *
 *   TPMKey ::= SEQUENCE {
 *     type       OBJECT IDENTIFIER,             -- 2.23.133.10.1.3 loadable key
 *     emptyAuth  [0] EXPLICIT BOOLEAN OPTIONAL, -- TRUE: no authValue (no PIN)
 *     policy     [1] EXPLICIT SEQUENCE OPTIONAL,
 *     secret     [2] EXPLICIT OCTET STRING OPTIONAL,
 *     authPolicy [3] EXPLICIT SEQUENCE OPTIONAL,
 *     parent     INTEGER,                       -- handle: 0x40000001 owner, 0x81...
 *     pubkey     OCTET STRING,                  -- marshalled TPM2B_PUBLIC
 *     privkey    OCTET STRING }                 -- marshalled TPM2B_PRIVATE
 *
 * Only loadable keys without policies are accepted (we sign with a password
 * session); the parser is bounds-checked and needs no TPM library, so it is
 * unit-tested and fuzzed on its own. The blobs are opaque here.
 */
#ifndef M2MVPN_CRED_TSS2_PEM_H
#define M2MVPN_CRED_TSS2_PEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TSS2_PEM_LABEL "TSS2 PRIVATE KEY"
/* Largest marshalled TPM2B_PUBLIC / TPM2B_PRIVATE we accept (their TPM
 * maxima are well below this). */
#define TSS2_BLOB_MAX 2048

typedef struct tss2_key_blob {
    bool empty_auth;          /**< emptyAuth TRUE (absent means FALSE) */
    uint32_t parent;          /**< parent handle */
    uint8_t pub[TSS2_BLOB_MAX];
    size_t pub_len;
    uint8_t priv[TSS2_BLOB_MAX];
    size_t priv_len;
} tss2_key_blob;

/**
 * Parse the DER TPMKey. Errors: CERT with a reason in err ("TSS2 key: ...")
 * for malformed or truncated DER, another key type (importable, sealed), a
 * policy, a parent that is not a 32-bit handle, an oversized blob, trailing
 * bytes. *ret is written only on success.
 */
int tss2_key_parse_der(const uint8_t *der, size_t len, tss2_key_blob *ret,
                       char *err, size_t err_len);

/** Parse a PEM file's contents: exactly the TSS2 PRIVATE KEY block (other
 *  blocks around it are ignored). Errors as tss2_key_parse_der(). */
int tss2_key_parse_pem(const uint8_t *pem, size_t len, tss2_key_blob *ret,
                       char *err, size_t err_len);

/** Encode `k` as DER into out[cap]. Errors: INVAL (cap too small, blobs empty). */
int tss2_key_encode_der(const tss2_key_blob *k, uint8_t *out, size_t cap, size_t *ret_len);

/** PEM text of `k`, a new NUL-terminated string (free()). Errors: INVAL, NOMEM. */
int tss2_key_encode_pem(const tss2_key_blob *k, char **ret);

#endif
