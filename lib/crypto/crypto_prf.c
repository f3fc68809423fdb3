/* SPDX-License-Identifier: Apache-2.0 */
/* HMAC-SHA2 PRFs and prf+ (RFC 7296 §2.13) over OpenSSL EVP_MAC. */
#include "crypto_algs.h"

#include <m2mvpn/m2mvpn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <stdlib.h>
#include <string.h>

#include "core/secmem.h"

struct crypto_prf {
    const crypto_prf_alg *alg;
    EVP_MAC_CTX *ctx; /* keyed once; re-initialised with the same key after each final */
};

int crypto_prf_new(uint16_t prf_id, const uint8_t *key, size_t key_len, crypto_prf **ret)
{
    /* EVP_MAC_init treats a NULL key as "keep the old key": an empty key
     * needs a non-NULL pointer. */
    static const uint8_t no_key[1];
    const crypto_prf_alg *alg = crypto_prf_alg_find(prf_id);
    if (!alg || !ret || (!key && key_len > 0))
        return M2MVPN_E_INVAL;

    crypto_prf *prf = calloc(1, sizeof(*prf));
    if (!prf)
        return M2MVPN_E_NOMEM;
    prf->alg = alg;

    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (!mac) {
        free(prf);
        return M2MVPN_E_CRYPTO;
    }
    prf->ctx = EVP_MAC_CTX_new(mac);
    EVP_MAC_free(mac); /* the context keeps its own reference */
    if (!prf->ctx) {
        free(prf);
        return M2MVPN_E_NOMEM;
    }
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)alg->digest, 0),
        OSSL_PARAM_construct_end(),
    };
    if (EVP_MAC_init(prf->ctx, key_len ? key : no_key, key_len, params) != 1) {
        crypto_prf_free(prf);
        return M2MVPN_E_CRYPTO;
    }
    *ret = prf;
    return 0;
}

void crypto_prf_free(crypto_prf *prf)
{
    if (!prf)
        return;
    EVP_MAC_CTX_free(prf->ctx); /* OpenSSL cleanses the HMAC key state */
    free(prf);
}

size_t crypto_prf_out_len(const crypto_prf *prf)
{
    return prf ? prf->alg->out_len : 0;
}

int crypto_prf_update(crypto_prf *prf, const void *data, size_t len)
{
    if (!prf || (!data && len > 0))
        return M2MVPN_E_INVAL;
    if (len == 0)
        return 0;
    return EVP_MAC_update(prf->ctx, data, len) == 1 ? 0 : M2MVPN_E_CRYPTO;
}

int crypto_prf_final(crypto_prf *prf, uint8_t *out, size_t out_cap)
{
    if (!prf || !out || out_cap < prf->alg->out_len)
        return M2MVPN_E_INVAL;
    size_t n = 0;
    if (EVP_MAC_final(prf->ctx, out, &n, out_cap) != 1 || n != prf->alg->out_len)
        return M2MVPN_E_CRYPTO;
    /* Ready for the next computation with the same key. */
    if (EVP_MAC_init(prf->ctx, NULL, 0, NULL) != 1)
        return M2MVPN_E_CRYPTO;
    return 0;
}

static int update_spans(crypto_prf *prf, const crypto_span *spans, size_t n)
{
    if (n > 0 && !spans)
        return M2MVPN_E_INVAL;
    for (size_t i = 0; i < n; i++) {
        int rc = crypto_prf_update(prf, spans[i].p, spans[i].len);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int crypto_prf_oneshot(uint16_t prf_id, const uint8_t *key, size_t key_len,
                       const crypto_span *data, size_t n_data, uint8_t *out, size_t out_cap)
{
    if (!out || out_cap < crypto_prf_len(prf_id))
        return M2MVPN_E_INVAL;
    crypto_prf *prf;
    int rc = crypto_prf_new(prf_id, key, key_len, &prf);
    if (rc < 0)
        return rc;
    rc = update_spans(prf, data, n_data);
    if (rc == 0)
        rc = crypto_prf_final(prf, out, out_cap);
    crypto_prf_free(prf);
    return rc;
}

int crypto_prf_plus(uint16_t prf_id, const uint8_t *key, size_t key_len,
                    const crypto_span *seed, size_t n_seed, uint8_t *out, size_t out_len)
{
    size_t hlen = crypto_prf_len(prf_id);
    if (hlen == 0 || !out || out_len == 0 || out_len > 255 * hlen)
        return M2MVPN_E_INVAL;
    crypto_prf *prf;
    int rc = crypto_prf_new(prf_id, key, key_len, &prf);
    if (rc < 0)
        return rc;

    uint8_t t[CRYPTO_MAX_PRF_LEN];
    size_t done = 0;
    for (unsigned counter = 1; done < out_len && rc == 0; counter++) {
        uint8_t c = (uint8_t)counter;
        if (counter > 1)
            rc = crypto_prf_update(prf, t, hlen);
        if (rc == 0)
            rc = update_spans(prf, seed, n_seed);
        if (rc == 0)
            rc = crypto_prf_update(prf, &c, 1);
        if (rc == 0)
            rc = crypto_prf_final(prf, t, sizeof(t));
        if (rc == 0) {
            size_t take = out_len - done < hlen ? out_len - done : hlen;
            memcpy(out + done, t, take);
            done += take;
        }
    }
    secure_wipe(t, sizeof(t));
    crypto_prf_free(prf);
    if (rc < 0)
        secure_wipe(out, out_len); /* no partial key material on failure */
    return rc;
}
