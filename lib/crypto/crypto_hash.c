/* SPDX-License-Identifier: Apache-2.0 */
#include <m2mvpn/m2mvpn.h>
#include <openssl/evp.h>

#include "crypto.h"
#include "crypto_legacy.h"

/* One digest over the parts; out holds want bytes. */
static int digest(const EVP_MD *md, const crypto_span *parts, size_t n_parts, uint8_t *out, unsigned want)
{
    if (!out || (n_parts && !parts))
        return M2MVPN_E_INVAL;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx)
        return M2MVPN_E_NOMEM;
    unsigned len = 0;
    int ok = EVP_DigestInit_ex(ctx, md, NULL);
    for (size_t i = 0; ok && i < n_parts; i++)
        ok = EVP_DigestUpdate(ctx, parts[i].p, parts[i].len);
    ok = ok && EVP_DigestFinal_ex(ctx, out, &len) && len == want;
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : M2MVPN_E_CRYPTO;
}

int crypto_sha1(const crypto_span *parts, size_t n_parts, uint8_t out[20])
{
    return digest(EVP_sha1(), parts, n_parts, out, 20);
}

/* For EAP-MD5 (crypto_legacy.h). */
int crypto_md5(const crypto_span *parts, size_t n_parts, uint8_t out[16])
{
    return digest(EVP_md5(), parts, n_parts, out, 16);
}
