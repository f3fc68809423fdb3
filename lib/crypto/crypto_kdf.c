/* SPDX-License-Identifier: Apache-2.0 */
/* IKEv2 key derivation: SKEYSEED, IKE SA keys, CHILD SA KEYMAT (RFC 7296 §2.14, §2.17, §2.18). */
#include "crypto_algs.h"

#include <m2mvpn/m2mvpn.h>
#include <stdlib.h>
#include <string.h>

#include "core/secmem.h"

/* Largest prf+ output we need: IKE SA keys with SHA-512 PRF and integrity
 * (3 * 64 + 2 * 64 + 2 * 36) or CHILD keys (2 * 36 + 2 * 64). */
#define KDF_MAX_KEYMAT (7 * CRYPTO_MAX_KEY_LEN)

static bool bytes_ok(const uint8_t *p, size_t len)
{
    return p != NULL && len > 0;
}

int crypto_ike_skeyseed(uint16_t prf_id, const uint8_t *ni, size_t ni_len,
                        const uint8_t *nr, size_t nr_len,
                        const uint8_t *g_ir, size_t g_ir_len, crypto_key *ret)
{
    if (!bytes_ok(ni, ni_len) || !bytes_ok(nr, nr_len) || !bytes_ok(g_ir, g_ir_len) || !ret)
        return M2MVPN_E_INVAL;
    size_t hlen = crypto_prf_len(prf_id);
    if (hlen == 0)
        return M2MVPN_E_INVAL;

    /* The PRF key is Ni | Nr (HMAC PRFs take variable-length keys, §2.14). */
    uint8_t *key = malloc(ni_len + nr_len);
    if (!key)
        return M2MVPN_E_NOMEM;
    memcpy(key, ni, ni_len);
    memcpy(key + ni_len, nr, nr_len);
    crypto_span data = { g_ir, g_ir_len };
    crypto_key out;
    int rc = crypto_prf_oneshot(prf_id, key, ni_len + nr_len, &data, 1, out.b, sizeof(out.b));
    secure_free(key, ni_len + nr_len);
    if (rc == 0) {
        out.len = hlen;
        *ret = out;
    }
    secure_wipe(&out, sizeof(out));
    return rc;
}

int crypto_ike_skeyseed_rekey(uint16_t old_prf_id, const crypto_key *old_sk_d,
                              const uint8_t *g_ir, size_t g_ir_len,
                              const uint8_t *ni, size_t ni_len,
                              const uint8_t *nr, size_t nr_len, crypto_key *ret)
{
    if (!old_sk_d || old_sk_d->len == 0 || old_sk_d->len > sizeof(old_sk_d->b) ||
        !bytes_ok(g_ir, g_ir_len) || !bytes_ok(ni, ni_len) || !bytes_ok(nr, nr_len) || !ret)
        return M2MVPN_E_INVAL;
    size_t hlen = crypto_prf_len(old_prf_id);
    if (hlen == 0)
        return M2MVPN_E_INVAL;
    crypto_span data[] = { { g_ir, g_ir_len }, { ni, ni_len }, { nr, nr_len } };
    crypto_key out;
    int rc = crypto_prf_oneshot(old_prf_id, old_sk_d->b, old_sk_d->len, data, 3,
                                out.b, sizeof(out.b));
    if (rc == 0) {
        out.len = hlen;
        *ret = out;
    }
    secure_wipe(&out, sizeof(out));
    return rc;
}

/* Take the next `len` bytes of keymat into *k. */
static void take_key(crypto_key *k, const uint8_t *keymat, size_t *off, size_t len)
{
    memcpy(k->b, keymat + *off, len);
    k->len = len;
    *off += len;
}

int crypto_ike_keys_derive(const crypto_suite *suite, const crypto_key *skeyseed,
                           const uint8_t *ni, size_t ni_len, const uint8_t *nr, size_t nr_len,
                           const uint8_t spi_i[8], const uint8_t spi_r[8],
                           crypto_ike_keys **ret)
{
    if (!suite || !skeyseed || skeyseed->len == 0 || skeyseed->len > sizeof(skeyseed->b) ||
        !bytes_ok(ni, ni_len) || !bytes_ok(nr, nr_len) || !spi_i || !spi_r || !ret)
        return M2MVPN_E_INVAL;
    size_t prf_len = crypto_prf_len(suite->prf_id);
    crypto_cipher_sizes sz;
    if (prf_len == 0 ||
        crypto_cipher_sizes_get(suite->encr_id, suite->encr_key_bits, suite->integ_id, &sz) < 0)
        return M2MVPN_E_INVAL;

    size_t total = 3 * prf_len + 2 * sz.integ_key_len + 2 * sz.encr_key_len;
    crypto_ike_keys *keys = calloc(1, sizeof(*keys));
    if (!keys)
        return M2MVPN_E_NOMEM;
    uint8_t keymat[KDF_MAX_KEYMAT];
    crypto_span seed[] = { { ni, ni_len }, { nr, nr_len }, { spi_i, 8 }, { spi_r, 8 } };
    int rc = crypto_prf_plus(suite->prf_id, skeyseed->b, skeyseed->len, seed, 4, keymat, total);
    if (rc < 0) {
        crypto_ike_keys_free(keys);
        return rc;
    }
    size_t off = 0;
    take_key(&keys->sk_d, keymat, &off, prf_len);
    take_key(&keys->sk_ai, keymat, &off, sz.integ_key_len);
    take_key(&keys->sk_ar, keymat, &off, sz.integ_key_len);
    take_key(&keys->sk_ei, keymat, &off, sz.encr_key_len);
    take_key(&keys->sk_er, keymat, &off, sz.encr_key_len);
    take_key(&keys->sk_pi, keymat, &off, prf_len);
    take_key(&keys->sk_pr, keymat, &off, prf_len);
    secure_wipe(keymat, sizeof(keymat));
    *ret = keys;
    return 0;
}

void crypto_ike_keys_free(crypto_ike_keys *keys)
{
    secure_free(keys, sizeof(*keys));
}

int crypto_child_keys_derive(const crypto_suite *suite, const crypto_key *sk_d,
                             const uint8_t *g_ir, size_t g_ir_len,
                             const uint8_t *ni, size_t ni_len, const uint8_t *nr, size_t nr_len,
                             crypto_child_keys **ret)
{
    if (!suite || !sk_d || sk_d->len == 0 || sk_d->len > sizeof(sk_d->b) ||
        (!g_ir && g_ir_len > 0) || !bytes_ok(ni, ni_len) || !bytes_ok(nr, nr_len) || !ret)
        return M2MVPN_E_INVAL;
    crypto_cipher_sizes sz;
    if (crypto_prf_len(suite->prf_id) == 0 ||
        crypto_cipher_sizes_get(suite->encr_id, suite->encr_key_bits, suite->integ_id, &sz) < 0)
        return M2MVPN_E_INVAL;

    size_t total = 2 * (sz.encr_key_len + sz.integ_key_len);
    crypto_child_keys *keys = calloc(1, sizeof(*keys));
    if (!keys)
        return M2MVPN_E_NOMEM;
    uint8_t keymat[KDF_MAX_KEYMAT];
    crypto_span seed[] = { { g_ir, g_ir_len }, { ni, ni_len }, { nr, nr_len } };
    int rc = crypto_prf_plus(suite->prf_id, sk_d->b, sk_d->len, seed, 3, keymat, total);
    if (rc < 0) {
        crypto_child_keys_free(keys);
        return rc;
    }
    /* All keys for initiator->responder first, encryption before integrity (§2.17). */
    size_t off = 0;
    take_key(&keys->encr_i, keymat, &off, sz.encr_key_len);
    take_key(&keys->integ_i, keymat, &off, sz.integ_key_len);
    take_key(&keys->encr_r, keymat, &off, sz.encr_key_len);
    take_key(&keys->integ_r, keymat, &off, sz.integ_key_len);
    secure_wipe(keymat, sizeof(keymat));
    *ret = keys;
    return 0;
}

void crypto_child_keys_free(crypto_child_keys *keys)
{
    secure_free(keys, sizeof(*keys));
}
