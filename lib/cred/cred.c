/* SPDX-License-Identifier: Apache-2.0 */
/* Provider-independent calls (contract: cred.h). */
#include "cred.h"

#include <m2mvpn/m2mvpn.h>

#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/secmem.h"

void cred_free(cred_provider *p)
{
    if (!p)
        return;
    if (p->ops && p->ops->destroy)
        p->ops->destroy(p->ctx);
    free(p);
}

const char *cred_name(const cred_provider *p)
{
    return p && p->ops && p->ops->name ? p->ops->name : "none";
}

int cred_chain(cred_provider *p, pki_cert *const **ret_certs, size_t *ret_n,
               char *err, size_t err_len)
{
    if (!p || !ret_certs || !ret_n)
        return M2MVPN_E_INVAL;
    return p->ops->chain(p->ctx, ret_certs, ret_n, err, err_len);
}

int cred_key_info(cred_provider *p, pki_key_type *ret_type, unsigned *ret_bits,
                  char *err, size_t err_len)
{
    if (!p || !ret_type)
        return M2MVPN_E_INVAL;
    return p->ops->key_info(p->ctx, ret_type, ret_bits, err, err_len);
}

bool cred_pin_needed(cred_provider *p)
{
    return p && p->ops->pin_needed(p->ctx);
}

int cred_set_pin(cred_provider *p, const char *pin, size_t len, char *err, size_t err_len)
{
    if (!p || !pin || len == 0)
        return M2MVPN_E_INVAL;
    return p->ops->set_pin(p->ctx, pin, len, err, err_len);
}

int cred_sign(cred_provider *p, pki_sig_scheme scheme, const uint8_t *data, size_t len,
              uint8_t *sig, size_t cap, size_t *ret_len, char *err, size_t err_len)
{
    if (!p || (!data && len) || !sig || !ret_len)
        return M2MVPN_E_INVAL;
    return p->ops->sign(p->ctx, scheme, data, len, sig, cap, ret_len, err, err_len);
}

void cred_describe(cred_provider *p, char *buf, size_t len)
{
    if (!buf || !len)
        return;
    buf[0] = '\0';
    if (p && p->ops->describe)
        p->ops->describe(p->ctx, buf, len);
}

bool cred_lost(cred_provider *p)
{
    return p && p->ops->lost && p->ops->lost(p->ctx);
}

int cred_spki(cred_provider *p, uint8_t *out, size_t cap, size_t *ret_len, char *err, size_t err_len)
{
    if (!p || !out || !ret_len)
        return M2MVPN_E_INVAL;
    if (!p->ops->spki) {
        if (err && err_len)
            snprintf(err, err_len, "provider %s cannot give its public key", cred_name(p));
        return M2MVPN_E_NOTSUPP;
    }
    return p->ops->spki(p->ctx, out, cap, ret_len, err, err_len);
}

struct evp_pkey_st *cred_evp_key(cred_provider *p, char *err, size_t err_len)
{
    struct evp_pkey_st *k = p && p->ops->evp_key ? p->ops->evp_key(p->ctx) : NULL;
    if (!k && err && err_len)
        snprintf(err, err_len, "provider %s cannot give its key to OpenSSL%s", p ? cred_name(p) : "(none)",
                 p && p->ops->evp_key ? " (locked)" : "");
    return k;
}

struct evp_pkey_st *cred_public_copy(struct evp_pkey_st *k)
{
    unsigned char *der = NULL;
    int n = k ? i2d_PUBKEY(k, &der) : 0;
    const unsigned char *q = der;
    EVP_PKEY *pub = n > 0 ? d2i_PUBKEY(NULL, &q, n) : NULL;
    OPENSSL_free(der);
    return pub;
}

int cred_sign_auth(cred_provider *p, pki_auth_method method, pki_sig_scheme scheme,
                   const uint8_t *signed_octets, size_t signed_len,
                   uint8_t *out, size_t cap, size_t *ret_len, char *err, size_t err_len)
{
    if (!p || (!signed_octets && signed_len) || !out || !ret_len)
        return M2MVPN_E_INVAL;
    pki_key_type kt;
    int rc = cred_key_info(p, &kt, NULL, err, err_len);
    if (rc < 0)
        return rc;
    if (!pki_auth_scheme_fits(method, scheme, kt)) {
        if (err && err_len)
            snprintf(err, err_len, "scheme %s does not fit AUTH method %s with a %s key",
                     pki_sig_scheme_name(scheme), pki_auth_method_name(method),
                     pki_key_type_name(kt));
        return M2MVPN_E_INVAL;
    }
    uint8_t sig[PKI_AUTH_MAX];
    size_t sig_len = 0;
    rc = cred_sign(p, scheme, signed_octets, signed_len, sig, sizeof sig, &sig_len, err, err_len);
    if (rc == 0)
        rc = pki_auth_data_format(method, scheme, kt, sig, sig_len, out, cap, ret_len);
    secure_wipe(sig, sizeof sig);
    return rc;
}
