/* SPDX-License-Identifier: Apache-2.0 */
/* Algorithm tables, names, transform sizes, random bytes. */
#include "crypto_algs.h"

#include <m2mvpn/m2mvpn.h>
#include <openssl/crypto.h>
#include <openssl/obj_mac.h>
#include <openssl/rand.h>
#include <limits.h>
#include <string.h>

/* ------------------------------------------------------------ tables */

static const crypto_prf_alg prf_algs[] = {
    { PRF_HMAC_SHA2_256, "PRF_HMAC_SHA2_256", "SHA256", 32 },
    { PRF_HMAC_SHA2_384, "PRF_HMAC_SHA2_384", "SHA384", 48 },
    { PRF_HMAC_SHA2_512, "PRF_HMAC_SHA2_512", "SHA512", 64 },
};

static const crypto_integ_alg integ_algs[] = {
    { AUTH_HMAC_SHA2_256_128, "AUTH_HMAC_SHA2_256_128", "SHA256", 32, 16 },
    { AUTH_HMAC_SHA2_384_192, "AUTH_HMAC_SHA2_384_192", "SHA384", 48, 24 },
    { AUTH_HMAC_SHA2_512_256, "AUTH_HMAC_SHA2_512_256", "SHA512", 64, 32 },
};

static const crypto_ke_alg ke_algs[] = {
    { KE_MODP2048, "MODP_2048", CRYPTO_KE_MODP, "modp_2048", 0, 256 },
    { KE_MODP3072, "MODP_3072", CRYPTO_KE_MODP, "modp_3072", 0, 384 },
    { KE_MODP4096, "MODP_4096", CRYPTO_KE_MODP, "modp_4096", 0, 512 },
    { KE_ECP256, "ECP_256", CRYPTO_KE_ECP, "P-256", NID_X9_62_prime256v1, 32 },
    { KE_ECP384, "ECP_384", CRYPTO_KE_ECP, "P-384", NID_secp384r1, 48 },
    { KE_ECP521, "ECP_521", CRYPTO_KE_ECP, "P-521", NID_secp521r1, 66 },
    { KE_X25519, "Curve25519", CRYPTO_KE_X25519, "X25519", 0, 32 },
};

static const struct {
    uint16_t id;
    const char *name;
} encr_names[] = {
    { ENCR_AES_CBC, "ENCR_AES_CBC" },
    { ENCR_AES_GCM_16, "ENCR_AES_GCM_16" },
    { ENCR_CHACHA20_POLY1305, "ENCR_CHACHA20_POLY1305" },
};

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

const crypto_prf_alg *crypto_prf_alg_find(uint16_t id)
{
    for (size_t i = 0; i < N_ELEMS(prf_algs); i++)
        if (prf_algs[i].id == id)
            return &prf_algs[i];
    return NULL;
}

const crypto_integ_alg *crypto_integ_alg_find(uint16_t id)
{
    for (size_t i = 0; i < N_ELEMS(integ_algs); i++)
        if (integ_algs[i].id == id)
            return &integ_algs[i];
    return NULL;
}

const crypto_ke_alg *crypto_ke_alg_find(uint16_t id)
{
    for (size_t i = 0; i < N_ELEMS(ke_algs); i++)
        if (ke_algs[i].id == id)
            return &ke_algs[i];
    return NULL;
}

/* ------------------------------------------------------------- names */

const char *crypto_encr_name(uint16_t encr_id)
{
    for (size_t i = 0; i < N_ELEMS(encr_names); i++)
        if (encr_names[i].id == encr_id)
            return encr_names[i].name;
    return "unknown";
}

const char *crypto_prf_name(uint16_t prf_id)
{
    const crypto_prf_alg *a = crypto_prf_alg_find(prf_id);
    return a ? a->name : "unknown";
}

const char *crypto_integ_name(uint16_t integ_id)
{
    const crypto_integ_alg *a = crypto_integ_alg_find(integ_id);
    return a ? a->name : "unknown";
}

const char *crypto_ke_name(uint16_t ke_id)
{
    const crypto_ke_alg *a = crypto_ke_alg_find(ke_id);
    return a ? a->name : "unknown";
}

const char *crypto_ke_kind_name(crypto_ke_kind kind)
{
    switch (kind) {
    case CRYPTO_KE_X25519: return "x25519";
    case CRYPTO_KE_ECP: return "ecp";
    case CRYPTO_KE_MODP: return "modp";
    }
    return "unknown";
}

const char *crypto_dir_name(crypto_dir dir)
{
    switch (dir) {
    case CRYPTO_DIR_ENCRYPT: return "encrypt";
    case CRYPTO_DIR_DECRYPT: return "decrypt";
    }
    return "unknown";
}

void crypto_set_err(char *err, size_t err_len, const char *msg)
{
    if (!err || err_len == 0)
        return;
    size_t n = strlen(msg);
    if (n >= err_len)
        n = err_len - 1;
    memcpy(err, msg, n);
    err[n] = '\0';
}

/* ------------------------------------------------------ random, compare */

int crypto_random(void *buf, size_t len)
{
    if (len == 0)
        return 0;
    if (!buf)
        return M2MVPN_E_INVAL;
    /* RAND_bytes takes an int: feed large requests in pieces. */
    uint8_t *p = buf;
    while (len > 0) {
        int chunk = len > INT_MAX ? INT_MAX : (int)len;
        if (RAND_bytes(p, chunk) != 1)
            return M2MVPN_E_CRYPTO;
        p += chunk;
        len -= (size_t)chunk;
    }
    return 0;
}

bool crypto_memeq(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

/* ------------------------------------------------------------- sizes */

size_t crypto_prf_len(uint16_t prf_id)
{
    const crypto_prf_alg *a = crypto_prf_alg_find(prf_id);
    return a ? a->out_len : 0;
}

size_t crypto_integ_key_len(uint16_t integ_id)
{
    const crypto_integ_alg *a = crypto_integ_alg_find(integ_id);
    return a ? a->key_len : 0;
}

int crypto_cipher_sizes_get(uint16_t encr_id, uint16_t key_bits, uint16_t integ_id,
                            crypto_cipher_sizes *ret)
{
    crypto_cipher_sizes s;
    memset(&s, 0, sizeof(s));
    if (!ret)
        return M2MVPN_E_INVAL;
    switch (encr_id) {
    case ENCR_AES_GCM_16:
        if (key_bits != 128 && key_bits != 256)
            return M2MVPN_E_INVAL;
        s.aead = true;
        s.encr_key_len = key_bits / 8 + CRYPTO_AEAD_SALT_LEN; /* RFC 4106 §8.1 */
        s.iv_len = 8;
        s.icv_len = 16;
        s.block_len = 1;
        break;
    case ENCR_CHACHA20_POLY1305:
        if (key_bits != 256 && key_bits != 0)
            return M2MVPN_E_INVAL;
        s.aead = true;
        s.encr_key_len = 32 + CRYPTO_AEAD_SALT_LEN; /* RFC 7634 §2 */
        s.iv_len = 8;
        s.icv_len = 16;
        s.block_len = 1;
        break;
    case ENCR_AES_CBC:
        if (key_bits != 128 && key_bits != 256)
            return M2MVPN_E_INVAL;
        s.encr_key_len = key_bits / 8;
        s.iv_len = 16;
        s.block_len = 16;
        break;
    default:
        return M2MVPN_E_INVAL;
    }
    if (s.aead) {
        if (integ_id != 0) /* RFC 5282 §8: no integrity transform with AEAD */
            return M2MVPN_E_INVAL;
    } else {
        const crypto_integ_alg *ia = crypto_integ_alg_find(integ_id);
        if (!ia)
            return M2MVPN_E_INVAL;
        s.integ_key_len = ia->key_len;
        s.icv_len = ia->icv_len;
    }
    *ret = s;
    return 0;
}
