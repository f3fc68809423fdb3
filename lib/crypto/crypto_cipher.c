/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Encryption transforms for the IKE SK payload and ESP: AES-GCM-16 and
 * ChaCha20-Poly1305 (AEAD, RFC 4106/5282/7634), AES-CBC with HMAC-SHA2
 * (RFC 7296 §3.14, RFC 3602, RFC 4868). Ciphers are fetched and keys
 * scheduled once per object; a message only sets the IV.
 */
#include "crypto_algs.h"

#include <m2mvpn/m2mvpn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "core/secmem.h"

#define AEAD_NONCE_LEN (CRYPTO_AEAD_SALT_LEN + 8)

struct crypto_cipher {
    uint16_t encr_id;
    crypto_dir dir;
    crypto_cipher_sizes sz;
    EVP_CIPHER *cipher;      /* fetched once */
    EVP_CIPHER_CTX *cctx;    /* keyed once for dir */
    EVP_MAC_CTX *mac;        /* AES-CBC only: keyed HMAC, re-initialised per message */
    uint8_t salt[CRYPTO_AEAD_SALT_LEN]; /* AEAD: implicit part of the nonce */
    uint64_t iv_base;        /* AEAD: random start of the IV sequence */
    uint64_t iv_used;        /* AEAD: IVs handed out by crypto_cipher_next_iv() */
};

static const char *cipher_name(uint16_t encr_id, uint16_t key_bits)
{
    switch (encr_id) {
    case ENCR_AES_GCM_16: return key_bits == 128 ? "AES-128-GCM" : "AES-256-GCM";
    case ENCR_CHACHA20_POLY1305: return "ChaCha20-Poly1305";
    case ENCR_AES_CBC: return key_bits == 128 ? "AES-128-CBC" : "AES-256-CBC";
    }
    return NULL;
}

int crypto_cipher_new(uint16_t encr_id, uint16_t key_bits, uint16_t integ_id, crypto_dir dir,
                      const uint8_t *encr_key, size_t encr_key_len,
                      const uint8_t *integ_key, size_t integ_key_len, crypto_cipher **ret)
{
    crypto_cipher_sizes sz;
    if (!ret || (dir != CRYPTO_DIR_ENCRYPT && dir != CRYPTO_DIR_DECRYPT) ||
        crypto_cipher_sizes_get(encr_id, key_bits, integ_id, &sz) < 0)
        return M2MVPN_E_INVAL;
    if (!encr_key || encr_key_len != sz.encr_key_len)
        return M2MVPN_E_INVAL;
    if (sz.aead ? (integ_key || integ_key_len) : (!integ_key || integ_key_len != sz.integ_key_len))
        return M2MVPN_E_INVAL;

    crypto_cipher *c = calloc(1, sizeof(*c));
    if (!c)
        return M2MVPN_E_NOMEM;
    c->encr_id = encr_id;
    c->dir = dir;
    c->sz = sz;

    int rc = M2MVPN_E_CRYPTO;
    c->cipher = EVP_CIPHER_fetch(NULL, cipher_name(encr_id, key_bits), NULL);
    c->cctx = EVP_CIPHER_CTX_new();
    if (!c->cipher || !c->cctx)
        goto fail;
    int enc = dir == CRYPTO_DIR_ENCRYPT ? 1 : 0;
    if (sz.aead) {
        /* Keying material = key | salt (RFC 4106 §8.1, RFC 7634 §2). */
        size_t key_len = sz.encr_key_len - CRYPTO_AEAD_SALT_LEN;
        memcpy(c->salt, encr_key + key_len, CRYPTO_AEAD_SALT_LEN);
        /* A random start keeps IVs unique even if a caller ever builds two
         * objects on the same key; within one object the counter does. */
        if (dir == CRYPTO_DIR_ENCRYPT &&
            crypto_random(&c->iv_base, sizeof(c->iv_base)) < 0)
            goto fail;
        if (EVP_CipherInit_ex2(c->cctx, c->cipher, encr_key, NULL, enc, NULL) != 1)
            goto fail;
        /* 12-byte nonce is the default for both; set it explicitly anyway. */
        size_t nonce_len = AEAD_NONCE_LEN;
        OSSL_PARAM p[] = {
            OSSL_PARAM_construct_size_t(OSSL_CIPHER_PARAM_AEAD_IVLEN, &nonce_len),
            OSSL_PARAM_construct_end(),
        };
        if (EVP_CIPHER_CTX_set_params(c->cctx, p) != 1)
            goto fail;
    } else {
        if (EVP_CipherInit_ex2(c->cctx, c->cipher, encr_key, NULL, enc, NULL) != 1 ||
            EVP_CIPHER_CTX_set_padding(c->cctx, 0) != 1) /* the caller pads (RFC 7296 §3.14) */
            goto fail;
        const crypto_integ_alg *ia = crypto_integ_alg_find(integ_id);
        EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
        if (!mac)
            goto fail;
        c->mac = EVP_MAC_CTX_new(mac);
        EVP_MAC_free(mac);
        if (!c->mac)
            goto fail;
        OSSL_PARAM p[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)ia->digest, 0),
            OSSL_PARAM_construct_end(),
        };
        if (EVP_MAC_init(c->mac, integ_key, integ_key_len, p) != 1)
            goto fail;
    }
    *ret = c;
    return 0;
fail:
    crypto_cipher_free(c);
    return rc;
}

void crypto_cipher_free(crypto_cipher *c)
{
    if (!c)
        return;
    EVP_CIPHER_CTX_free(c->cctx); /* cleanses the key schedule */
    EVP_MAC_CTX_free(c->mac);
    EVP_CIPHER_free(c->cipher);
    secure_free(c, sizeof(*c));
}

const crypto_cipher_sizes *crypto_cipher_get_sizes(const crypto_cipher *c)
{
    return c ? &c->sz : NULL;
}

int crypto_cipher_next_iv(crypto_cipher *c, uint8_t *iv)
{
    if (!c || !iv || c->dir != CRYPTO_DIR_ENCRYPT)
        return M2MVPN_E_INVAL;
    if (!c->sz.aead)
        return crypto_random(iv, c->sz.iv_len);
    if (c->iv_used == UINT64_MAX)
        return M2MVPN_E_CRYPTO; /* a nonce must never repeat under one key */
    uint64_t v = c->iv_base + c->iv_used++; /* wraps mod 2^64: still 2^64 distinct values */
    for (int i = 7; i >= 0; i--)
        iv[7 - i] = (uint8_t)(v >> (8 * i));
    return 0;
}

/* Common argument checks; the EVP calls take int lengths. */
static int check_msg(const crypto_cipher *c, const crypto_msg *m, crypto_dir want)
{
    if (!c || !m || c->dir != want)
        return M2MVPN_E_INVAL;
    if (!m->iv || !m->icv || (!m->aad && m->aad_len) ||
        (m->data_len && (!m->in || !m->out)))
        return M2MVPN_E_INVAL;
    if (m->aad_len > INT_MAX || m->data_len > INT_MAX || m->data_len % c->sz.block_len)
        return M2MVPN_E_INVAL;
    if (c->sz.aead ? (m->trailer || m->trailer_len) : (!m->trailer && m->trailer_len))
        return M2MVPN_E_INVAL;
    if (!c->sz.aead && m->data_len == 0)
        return M2MVPN_E_INVAL; /* CBC always carries at least the pad length byte: one block */
    /* In place or disjoint: OpenSSL does not support partial overlap. */
    if (m->data_len && m->in != m->out) {
        const uint8_t *o = m->out;
        if (o < m->in + m->data_len && m->in < o + m->data_len)
            return M2MVPN_E_INVAL;
    }
    return 0;
}

/* AEAD: set nonce = salt | iv, feed AAD, en/decrypt data. Tag handled by caller. */
static int aead_start(crypto_cipher *c, const crypto_msg *m)
{
    uint8_t nonce[AEAD_NONCE_LEN];
    memcpy(nonce, c->salt, CRYPTO_AEAD_SALT_LEN);
    memcpy(nonce + CRYPTO_AEAD_SALT_LEN, m->iv, 8);
    int outl;
    if (EVP_CipherInit_ex2(c->cctx, NULL, NULL, nonce, -1, NULL) != 1)
        return M2MVPN_E_CRYPTO;
    if (m->aad_len && EVP_CipherUpdate(c->cctx, NULL, &outl, m->aad, (int)m->aad_len) != 1)
        return M2MVPN_E_CRYPTO;
    if (m->data_len &&
        (EVP_CipherUpdate(c->cctx, m->out, &outl, m->in, (int)m->data_len) != 1 ||
         (size_t)outl != m->data_len))
        return M2MVPN_E_CRYPTO;
    return 0;
}

/* HMAC(aad | iv | ciphertext | trailer), truncated to icv_len. */
static int cbc_icv(crypto_cipher *c, const crypto_msg *m, const uint8_t *ciphertext,
                   uint8_t icv[CRYPTO_MAX_ICV_LEN])
{
    uint8_t full[CRYPTO_MAX_PRF_LEN];
    size_t n = 0;
    int ok = EVP_MAC_init(c->mac, NULL, 0, NULL) == 1 &&
             (!m->aad_len || EVP_MAC_update(c->mac, m->aad, m->aad_len) == 1) &&
             EVP_MAC_update(c->mac, m->iv, c->sz.iv_len) == 1 &&
             EVP_MAC_update(c->mac, ciphertext, m->data_len) == 1 &&
             (!m->trailer_len || EVP_MAC_update(c->mac, m->trailer, m->trailer_len) == 1) &&
             EVP_MAC_final(c->mac, full, &n, sizeof(full)) == 1 && n >= c->sz.icv_len;
    if (ok)
        memcpy(icv, full, c->sz.icv_len);
    secure_wipe(full, sizeof(full));
    return ok ? 0 : M2MVPN_E_CRYPTO;
}

static int cbc_crypt(crypto_cipher *c, const crypto_msg *m)
{
    int outl = 0, fin = 0;
    if (EVP_CipherInit_ex2(c->cctx, NULL, NULL, m->iv, -1, NULL) != 1 ||
        EVP_CipherUpdate(c->cctx, m->out, &outl, m->in, (int)m->data_len) != 1 ||
        EVP_CipherFinal_ex(c->cctx, m->out + outl, &fin) != 1 ||
        (size_t)(outl + fin) != m->data_len)
        return M2MVPN_E_CRYPTO;
    return 0;
}

int crypto_cipher_encrypt(crypto_cipher *c, const crypto_msg *m)
{
    int rc = check_msg(c, m, CRYPTO_DIR_ENCRYPT);
    if (rc < 0)
        return rc;
    if (c->sz.aead) {
        uint8_t tail[16]; /* AEAD Final emits no bytes; m->out may be NULL when data_len is 0 */
        int outl = 0;
        rc = aead_start(c, m);
        if (rc == 0 && (EVP_CipherFinal_ex(c->cctx, tail, &outl) != 1 || outl != 0 ||
                        EVP_CIPHER_CTX_ctrl(c->cctx, EVP_CTRL_AEAD_GET_TAG,
                                            (int)c->sz.icv_len, m->icv) != 1))
            rc = M2MVPN_E_CRYPTO;
        return rc;
    }
    rc = cbc_crypt(c, m);
    if (rc == 0) {
        uint8_t icv[CRYPTO_MAX_ICV_LEN];
        rc = cbc_icv(c, m, m->out, icv);
        if (rc == 0)
            memcpy(m->icv, icv, c->sz.icv_len);
    }
    return rc;
}

int crypto_cipher_decrypt(crypto_cipher *c, const crypto_msg *m)
{
    int rc = check_msg(c, m, CRYPTO_DIR_DECRYPT);
    if (rc < 0)
        return rc;
    if (c->sz.aead) {
        uint8_t tag[CRYPTO_MAX_ICV_LEN], tail[16];
        int outl = 0;
        memcpy(tag, m->icv, c->sz.icv_len);
        rc = aead_start(c, m);
        /* The provider compares the tag in constant time inside Final. */
        if (rc == 0 && (EVP_CIPHER_CTX_ctrl(c->cctx, EVP_CTRL_AEAD_SET_TAG,
                                            (int)c->sz.icv_len, tag) != 1 ||
                        EVP_CipherFinal_ex(c->cctx, tail, &outl) != 1 || outl != 0))
            rc = M2MVPN_E_CRYPTO;
        if (rc < 0 && m->data_len)
            secure_wipe(m->out, m->data_len);
        return rc;
    }
    /* Encrypt-then-MAC: check the ICV over the ciphertext before decrypting. */
    uint8_t icv[CRYPTO_MAX_ICV_LEN];
    rc = cbc_icv(c, m, m->in, icv);
    if (rc == 0 && CRYPTO_memcmp(icv, m->icv, c->sz.icv_len) != 0)
        rc = M2MVPN_E_CRYPTO;
    if (rc == 0)
        rc = cbc_crypt(c, m);
    if (rc < 0)
        secure_wipe(m->out, m->data_len);
    return rc;
}
