/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Private to lib/crypto: the algorithm tables that map IANA transform IDs to
 * OpenSSL names and sizes. One table per transform type, so adding an
 * algorithm is one row.
 */
#ifndef M2MVPN_CRYPTO_ALGS_H
#define M2MVPN_CRYPTO_ALGS_H

#include "crypto.h"

typedef struct crypto_prf_alg {
    uint16_t id;
    const char *name;        /* IANA name */
    const char *digest;      /* OpenSSL digest name for HMAC */
    size_t out_len;
} crypto_prf_alg;

typedef struct crypto_integ_alg {
    uint16_t id;
    const char *name;
    const char *digest;
    size_t key_len;          /* = digest length (RFC 4868 §2.1.1) */
    size_t icv_len;          /* truncated to half the digest (RFC 4868 §2.3) */
} crypto_integ_alg;

typedef enum crypto_ke_kind {
    CRYPTO_KE_X25519 = 0,
    CRYPTO_KE_ECP = 1,
    CRYPTO_KE_MODP = 2
} crypto_ke_kind;

typedef struct crypto_ke_alg {
    uint16_t id;
    const char *name;
    crypto_ke_kind kind;
    const char *group;       /* OpenSSL group/curve name */
    int nid;                 /* curve NID for ECP, 0 otherwise */
    size_t field_len;        /* bytes of one coordinate / the modulus / the X25519 key */
} crypto_ke_alg;

const crypto_prf_alg *crypto_prf_alg_find(uint16_t id);
const crypto_integ_alg *crypto_integ_alg_find(uint16_t id);
const crypto_ke_alg *crypto_ke_alg_find(uint16_t id);
const char *crypto_ke_kind_name(crypto_ke_kind kind);

/* Write a reason into a caller's error buffer (no-op if err_len is 0). */
void crypto_set_err(char *err, size_t err_len, const char *msg);

#endif
