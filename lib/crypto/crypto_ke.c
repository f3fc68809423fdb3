/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Ephemeral key exchange for the KE payload: X25519 (RFC 7748, RFC 8031),
 * ECP groups in IKEv2 encoding (RFC 5903: x || y, shared secret x), MODP
 * groups (RFC 3526, values padded to the modulus length, RFC 7296 §3.4).
 * Every peer value is validated before use.
 */
#include "crypto_algs.h"

#include <m2mvpn/m2mvpn.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/dh.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <stdlib.h>
#include <string.h>

#include "core/secmem.h"

struct crypto_ke {
    const crypto_ke_alg *alg;
    EVP_PKEY *pkey; /* our key pair; OpenSSL wipes the private part on free */
};

size_t crypto_ke_public_len(uint16_t ke_id)
{
    const crypto_ke_alg *a = crypto_ke_alg_find(ke_id);
    if (!a)
        return 0;
    return a->kind == CRYPTO_KE_ECP ? 2 * a->field_len : a->field_len;
}

size_t crypto_ke_shared_len(uint16_t ke_id)
{
    const crypto_ke_alg *a = crypto_ke_alg_find(ke_id);
    return a ? a->field_len : 0;
}

uint16_t crypto_ke_id(const crypto_ke *ke)
{
    return ke ? ke->alg->id : 0;
}

static int ke_wrap(const crypto_ke_alg *alg, EVP_PKEY *pkey, crypto_ke **ret)
{
    crypto_ke *ke = calloc(1, sizeof(*ke));
    if (!ke) {
        EVP_PKEY_free(pkey);
        return M2MVPN_E_NOMEM;
    }
    ke->alg = alg;
    ke->pkey = pkey;
    *ret = ke;
    return 0;
}

void crypto_ke_free(crypto_ke *ke)
{
    if (!ke)
        return;
    EVP_PKEY_free(ke->pkey);
    free(ke);
}

int crypto_ke_new(uint16_t ke_id, crypto_ke **ret)
{
    const crypto_ke_alg *alg = crypto_ke_alg_find(ke_id);
    if (!alg || !ret)
        return M2MVPN_E_INVAL;
    EVP_PKEY *pkey = NULL;
    switch (alg->kind) {
    case CRYPTO_KE_X25519:
        pkey = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
        break;
    case CRYPTO_KE_ECP:
        pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", alg->group);
        break;
    case CRYPTO_KE_MODP: {
        EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "DH", NULL);
        OSSL_PARAM p[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)alg->group, 0),
            OSSL_PARAM_construct_end(),
        };
        if (!ctx || EVP_PKEY_keygen_init(ctx) != 1 || EVP_PKEY_CTX_set_params(ctx, p) != 1 ||
            EVP_PKEY_generate(ctx, &pkey) != 1)
            pkey = NULL;
        EVP_PKEY_CTX_free(ctx);
        break;
    }
    }
    if (!pkey)
        return M2MVPN_E_CRYPTO;
    return ke_wrap(alg, pkey, ret);
}

/* ------------------------------------------------------ from private */

/* Key pair from parameters built by `bld`; consumes nothing. */
static EVP_PKEY *pkey_fromdata(const char *type, OSSL_PARAM_BLD *bld, int selection)
{
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, selection, params) != 1)
        pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params); /* built params of private keys are cleansed by OpenSSL */
    return pkey;
}

/* ECP: public = priv * G, computed here because OpenSSL's import does not derive it. */
static EVP_PKEY *ecp_from_private(const crypto_ke_alg *alg, const uint8_t *priv, size_t len)
{
    EVP_PKEY *pkey = NULL;
    uint8_t pub[1 + 2 * 66];
    BN_CTX *bnctx = BN_CTX_new();
    EC_GROUP *group = EC_GROUP_new_by_curve_name(alg->nid);
    EC_POINT *point = group ? EC_POINT_new(group) : NULL;
    BIGNUM *d = BN_secure_new();
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (!bnctx || !point || !d || !bld || len != alg->field_len || !BN_bin2bn(priv, (int)len, d))
        goto out;
    /* 1 <= d < n */
    if (BN_is_zero(d) || BN_cmp(d, EC_GROUP_get0_order(group)) >= 0)
        goto out;
    size_t pub_len;
    if (EC_POINT_mul(group, point, d, NULL, NULL, bnctx) != 1 ||
        (pub_len = EC_POINT_point2oct(group, point, POINT_CONVERSION_UNCOMPRESSED, pub,
                                      sizeof(pub), bnctx)) != 1 + 2 * alg->field_len)
        goto out;
    if (OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, alg->group, 0) != 1 ||
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, d) != 1 ||
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub, pub_len) != 1)
        goto out;
    pkey = pkey_fromdata("EC", bld, EVP_PKEY_KEYPAIR);
out:
    OSSL_PARAM_BLD_free(bld);
    BN_clear_free(d);
    EC_POINT_free(point);
    EC_GROUP_free(group);
    BN_CTX_free(bnctx);
    return pkey;
}

/* Domain parameters p, g of a named MODP group. */
static int modp_params(const crypto_ke_alg *alg, BIGNUM **p, BIGNUM **g)
{
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    EVP_PKEY *dom = NULL;
    int rc = M2MVPN_E_CRYPTO;
    *p = *g = NULL;
    if (bld && OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, alg->group, 0) == 1)
        dom = pkey_fromdata("DH", bld, EVP_PKEY_KEY_PARAMETERS);
    if (dom && EVP_PKEY_get_bn_param(dom, OSSL_PKEY_PARAM_FFC_P, p) == 1 &&
        EVP_PKEY_get_bn_param(dom, OSSL_PKEY_PARAM_FFC_G, g) == 1)
        rc = 0;
    if (rc < 0) {
        BN_free(*p);
        BN_free(*g);
        *p = *g = NULL;
    }
    EVP_PKEY_free(dom);
    OSSL_PARAM_BLD_free(bld);
    return rc;
}

static EVP_PKEY *modp_from_private(const crypto_ke_alg *alg, const uint8_t *priv, size_t len)
{
    EVP_PKEY *pkey = NULL;
    BIGNUM *p = NULL, *g = NULL, *y = BN_new(), *x = BN_secure_new(), *pm1 = BN_new();
    BN_CTX *bnctx = BN_CTX_secure_new();
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (!y || !x || !pm1 || !bnctx || !bld || len == 0 || len > alg->field_len ||
        modp_params(alg, &p, &g) < 0 || !BN_bin2bn(priv, (int)len, x) || !BN_copy(pm1, p) ||
        !BN_sub_word(pm1, 1))
        goto out;
    /* 1 < x < p-1 */
    if (BN_cmp(x, BN_value_one()) <= 0 || BN_cmp(x, pm1) >= 0)
        goto out;
    BN_set_flags(x, BN_FLG_CONSTTIME);
    if (BN_mod_exp(y, g, x, p, bnctx) != 1)
        goto out;
    if (OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, alg->group, 0) != 1 ||
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, x) != 1 ||
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PUB_KEY, y) != 1)
        goto out;
    pkey = pkey_fromdata("DH", bld, EVP_PKEY_KEYPAIR);
out:
    OSSL_PARAM_BLD_free(bld);
    BN_CTX_free(bnctx);
    BN_clear_free(x);
    BN_free(y);
    BN_free(pm1);
    BN_free(p);
    BN_free(g);
    return pkey;
}

int crypto_ke_new_from_private(uint16_t ke_id, const uint8_t *priv, size_t priv_len,
                               crypto_ke **ret)
{
    const crypto_ke_alg *alg = crypto_ke_alg_find(ke_id);
    if (!alg || !ret || !priv || priv_len == 0 || priv_len > alg->field_len)
        return M2MVPN_E_INVAL;
    EVP_PKEY *pkey = NULL;
    switch (alg->kind) {
    case CRYPTO_KE_X25519:
        if (priv_len != alg->field_len)
            return M2MVPN_E_INVAL;
        pkey = EVP_PKEY_new_raw_private_key_ex(NULL, "X25519", NULL, priv, priv_len);
        break;
    case CRYPTO_KE_ECP:
        pkey = ecp_from_private(alg, priv, priv_len);
        break;
    case CRYPTO_KE_MODP:
        pkey = modp_from_private(alg, priv, priv_len);
        break;
    }
    if (!pkey)
        return M2MVPN_E_INVAL; /* out of range for the group, or OpenSSL refused it */
    return ke_wrap(alg, pkey, ret);
}

/* ------------------------------------------------------------ public */

int crypto_ke_public(const crypto_ke *ke, uint8_t *out, size_t out_cap, size_t *ret_len)
{
    if (!ke || !out || !ret_len)
        return M2MVPN_E_INVAL;
    const crypto_ke_alg *alg = ke->alg;
    size_t want = crypto_ke_public_len(alg->id);
    if (out_cap < want)
        return M2MVPN_E_INVAL;
    switch (alg->kind) {
    case CRYPTO_KE_X25519: {
        size_t n = out_cap;
        if (EVP_PKEY_get_raw_public_key(ke->pkey, out, &n) != 1 || n != want)
            return M2MVPN_E_CRYPTO;
        break;
    }
    case CRYPTO_KE_ECP: {
        /* OpenSSL encodes 0x04 | x | y; IKEv2 sends x | y (RFC 5903 §7). */
        uint8_t enc[1 + 2 * 66];
        size_t n = 0;
        if (EVP_PKEY_get_octet_string_param(ke->pkey, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY,
                                            enc, sizeof(enc), &n) != 1 ||
            n != 1 + want || enc[0] != POINT_CONVERSION_UNCOMPRESSED)
            return M2MVPN_E_CRYPTO;
        memcpy(out, enc + 1, want);
        break;
    }
    case CRYPTO_KE_MODP: {
        BIGNUM *y = NULL;
        int ok = EVP_PKEY_get_bn_param(ke->pkey, OSSL_PKEY_PARAM_PUB_KEY, &y) == 1 &&
                 BN_bn2binpad(y, out, (int)want) == (int)want;
        BN_free(y);
        if (!ok)
            return M2MVPN_E_CRYPTO;
        break;
    }
    }
    *ret_len = want;
    return 0;
}

/* ------------------------------------------------------------ derive */

/* Peer's x || y as an EC key, after checking the point ourselves: coordinates
 * in [0, p), on the curve, not the point at infinity (RFC 5903 §7, SP 800-56A
 * 5.6.2.3.3). */
static int ecp_peer(const crypto_ke_alg *alg, const uint8_t *peer, EVP_PKEY **ret,
                    char *err, size_t err_len)
{
    int rc = M2MVPN_E_CRYPTO;
    size_t fl = alg->field_len;
    uint8_t enc[1 + 2 * 66];
    BN_CTX *bnctx = BN_CTX_new();
    EC_GROUP *group = EC_GROUP_new_by_curve_name(alg->nid);
    EC_POINT *pt = group ? EC_POINT_new(group) : NULL;
    BIGNUM *p = BN_new(), *x = BN_new(), *y = BN_new();
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (!bnctx || !pt || !p || !x || !y || !bld ||
        EC_GROUP_get_curve(group, p, NULL, NULL, bnctx) != 1 ||
        !BN_bin2bn(peer, (int)fl, x) || !BN_bin2bn(peer + fl, (int)fl, y))
        goto out;
    rc = M2MVPN_E_PROTOCOL;
    if (BN_cmp(x, p) >= 0 || BN_cmp(y, p) >= 0) {
        crypto_set_err(err, err_len, "ECP public value: coordinate not below the field prime");
        goto out;
    }
    /* set_affine_coordinates refuses points off the curve; (0,0) is not on
     * any of these curves (b != 0), and infinity has no affine x || y. */
    if (EC_POINT_set_affine_coordinates(group, pt, x, y, bnctx) != 1 ||
        EC_POINT_is_on_curve(group, pt, bnctx) != 1) {
        crypto_set_err(err, err_len, "ECP public value: point not on the curve");
        goto out;
    }
    if (EC_POINT_is_at_infinity(group, pt)) {
        crypto_set_err(err, err_len, "ECP public value: point at infinity");
        goto out;
    }
    rc = M2MVPN_E_CRYPTO;
    enc[0] = POINT_CONVERSION_UNCOMPRESSED;
    memcpy(enc + 1, peer, 2 * fl);
    if (OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, alg->group, 0) != 1 ||
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, enc, 1 + 2 * fl) != 1)
        goto out;
    *ret = pkey_fromdata("EC", bld, EVP_PKEY_PUBLIC_KEY);
    if (*ret)
        rc = 0;
out:
    OSSL_PARAM_BLD_free(bld);
    BN_free(p);
    BN_free(x);
    BN_free(y);
    EC_POINT_free(pt);
    EC_GROUP_free(group);
    BN_CTX_free(bnctx);
    return rc;
}

/* Peer's MODP public value: 1 < y < p-1 (RFC 7296 §5, SP 800-56A 5.6.2.3.1). */
static int modp_peer(const crypto_ke_alg *alg, const uint8_t *peer, EVP_PKEY **ret,
                     char *err, size_t err_len)
{
    int rc = M2MVPN_E_CRYPTO;
    BIGNUM *p = NULL, *g = NULL, *y = BN_new(), *pm1 = BN_new();
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (!y || !pm1 || !bld || modp_params(alg, &p, &g) < 0 ||
        !BN_bin2bn(peer, (int)alg->field_len, y) || !BN_copy(pm1, p) || !BN_sub_word(pm1, 1))
        goto out;
    if (BN_cmp(y, BN_value_one()) <= 0 || BN_cmp(y, pm1) >= 0) {
        crypto_set_err(err, err_len, "MODP public value out of range (must be 1 < y < p-1)");
        rc = M2MVPN_E_PROTOCOL;
        goto out;
    }
    if (OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, alg->group, 0) != 1 ||
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PUB_KEY, y) != 1)
        goto out;
    *ret = pkey_fromdata("DH", bld, EVP_PKEY_PUBLIC_KEY);
    if (*ret)
        rc = 0;
out:
    OSSL_PARAM_BLD_free(bld);
    BN_free(p);
    BN_free(g);
    BN_free(y);
    BN_free(pm1);
    return rc;
}

static int x25519_peer(const uint8_t *peer, EVP_PKEY **ret)
{
    *ret = EVP_PKEY_new_raw_public_key_ex(NULL, "X25519", NULL, peer, 32);
    return *ret ? 0 : M2MVPN_E_CRYPTO;
}

static bool all_zero(const uint8_t *p, size_t n)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= p[i];
    return acc == 0;
}

int crypto_ke_derive(crypto_ke *ke, const uint8_t *peer, size_t peer_len,
                     uint8_t *out, size_t out_cap, size_t *ret_len,
                     char *err, size_t err_len)
{
    if (!ke || !peer || !out || !ret_len)
        return M2MVPN_E_INVAL;
    const crypto_ke_alg *alg = ke->alg;
    size_t shared_len = alg->field_len;
    if (out_cap < shared_len)
        return M2MVPN_E_INVAL;
    if (peer_len != crypto_ke_public_len(alg->id)) {
        crypto_set_err(err, err_len, "key exchange value has the wrong length for the group");
        return M2MVPN_E_PROTOCOL;
    }

    EVP_PKEY *peer_key = NULL;
    int rc;
    switch (alg->kind) {
    case CRYPTO_KE_X25519: rc = x25519_peer(peer, &peer_key); break;
    case CRYPTO_KE_ECP: rc = ecp_peer(alg, peer, &peer_key, err, err_len); break;
    case CRYPTO_KE_MODP: rc = modp_peer(alg, peer, &peer_key, err, err_len); break;
    default: rc = M2MVPN_E_INVAL; break;
    }
    if (rc < 0)
        return rc;

    uint8_t secret[CRYPTO_MAX_KE_LEN];
    size_t n = sizeof(secret);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, ke->pkey, NULL);
    rc = M2MVPN_E_CRYPTO;
    if (!ctx || EVP_PKEY_derive_init(ctx) != 1)
        goto out;
    if (alg->kind == CRYPTO_KE_MODP && EVP_PKEY_CTX_set_dh_pad(ctx, 1) != 1)
        goto out;
    /* validate_peer = 1: OpenSSL's own public key check on top of ours
     * (for the MODP groups also y^q = 1 mod p). */
    if (EVP_PKEY_derive_set_peer_ex(ctx, peer_key, 1) != 1) {
        crypto_set_err(err, err_len, "peer key exchange value rejected");
        rc = M2MVPN_E_PROTOCOL;
        goto out;
    }
    if (EVP_PKEY_derive(ctx, secret, &n) != 1) {
        if (alg->kind == CRYPTO_KE_X25519) {
            /* OpenSSL refuses an all-zero X25519 result (low-order point). */
            crypto_set_err(err, err_len, "X25519 shared secret is all zero");
            rc = M2MVPN_E_PROTOCOL;
        }
        goto out;
    }
    if (n != shared_len)
        goto out;
    if (alg->kind == CRYPTO_KE_X25519 && all_zero(secret, n)) {
        crypto_set_err(err, err_len, "X25519 shared secret is all zero");
        rc = M2MVPN_E_PROTOCOL;
        goto out;
    }
    memcpy(out, secret, n);
    *ret_len = n;
    rc = 0;
out:
    secure_wipe(secret, sizeof(secret));
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(peer_key);
    return rc;
}
