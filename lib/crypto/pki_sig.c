/* SPDX-License-Identifier: Apache-2.0 */
/* AUTH signatures: RFC 7427 AlgorithmIdentifiers, ECDSA formats, verification,
 * AUTH data formatting and scheme choice (contract: pki.h). */
#include "pki.h"
#include "pki_internal.h"

#include <m2mvpn/m2mvpn.h>

#include "core/buf.h"

#include <stdio.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

/* ------------------------------------------------------------------ OIDs */

/* DER contents (without tag and length) of the object identifiers we know. */
static const uint8_t OID_SHA256_RSA[] = { 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b };
static const uint8_t OID_SHA384_RSA[] = { 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c };
static const uint8_t OID_SHA512_RSA[] = { 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d };
static const uint8_t OID_RSASSA_PSS[] = { 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a };
static const uint8_t OID_MGF1[] = { 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08 };
static const uint8_t OID_SHA256[] = { 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01 };
static const uint8_t OID_SHA384[] = { 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02 };
static const uint8_t OID_SHA512[] = { 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03 };
static const uint8_t OID_ECDSA_SHA256[] = { 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02 };
static const uint8_t OID_ECDSA_SHA384[] = { 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03 };
static const uint8_t OID_ECDSA_SHA512[] = { 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04 };
static const uint8_t OID_ED25519[] = { 0x2b, 0x65, 0x70 }; /* 1.3.101.112, RFC 8410 */

typedef struct oid_ref {
    const uint8_t *der;
    size_t len;
} oid_ref;
#define OID(a) { a, sizeof a }

/* Per scheme: its signature OID (PSS: the PSS OID) and its hash OID. */
static const struct {
    oid_ref sig;
    oid_ref hash;
    size_t hash_len;
} scheme_oids[PKI_SIG_SCHEME_COUNT] = {
    [PKI_SIG_RSA_PKCS1_SHA256] = { OID(OID_SHA256_RSA), OID(OID_SHA256), 32 },
    [PKI_SIG_RSA_PKCS1_SHA384] = { OID(OID_SHA384_RSA), OID(OID_SHA384), 48 },
    [PKI_SIG_RSA_PKCS1_SHA512] = { OID(OID_SHA512_RSA), OID(OID_SHA512), 64 },
    [PKI_SIG_RSA_PSS_SHA256] = { OID(OID_RSASSA_PSS), OID(OID_SHA256), 32 },
    [PKI_SIG_RSA_PSS_SHA384] = { OID(OID_RSASSA_PSS), OID(OID_SHA384), 48 },
    [PKI_SIG_RSA_PSS_SHA512] = { OID(OID_RSASSA_PSS), OID(OID_SHA512), 64 },
    [PKI_SIG_ECDSA_SHA256] = { OID(OID_ECDSA_SHA256), OID(OID_SHA256), 32 },
    [PKI_SIG_ECDSA_SHA384] = { OID(OID_ECDSA_SHA384), OID(OID_SHA384), 48 },
    [PKI_SIG_ECDSA_SHA512] = { OID(OID_ECDSA_SHA512), OID(OID_SHA512), 64 },
    [PKI_SIG_ED25519] = { OID(OID_ED25519), { NULL, 0 }, 0 },
};

bool pki_scheme_is_rsa(pki_sig_scheme s)
{
    return s >= PKI_SIG_RSA_PKCS1_SHA1 && s <= PKI_SIG_RSA_PSS_SHA512;
}

bool pki_scheme_is_pss(pki_sig_scheme s)
{
    return s >= PKI_SIG_RSA_PSS_SHA256 && s <= PKI_SIG_RSA_PSS_SHA512;
}

bool pki_scheme_is_ecdsa(pki_sig_scheme s)
{
    return s >= PKI_SIG_ECDSA_SHA256 && s <= PKI_SIG_ECDSA_SHA512;
}

bool pki_scheme_valid(pki_sig_scheme s)
{
    return s > PKI_SIG_NONE && s < PKI_SIG_SCHEME_COUNT;
}

bool pki_scheme_set_padding(EVP_PKEY_CTX *pctx, pki_sig_scheme s)
{
    if (pki_scheme_is_pss(s))
        return EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
               EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, pki_scheme_md(s)) == 1 &&
               EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) == 1;
    if (pki_scheme_is_rsa(s))
        return EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) == 1;
    return true;
}

const EVP_MD *pki_scheme_md(pki_sig_scheme s)
{
    switch (s) {
    case PKI_SIG_RSA_PKCS1_SHA1: return EVP_sha1();
    case PKI_SIG_RSA_PKCS1_SHA256:
    case PKI_SIG_RSA_PSS_SHA256:
    case PKI_SIG_ECDSA_SHA256: return EVP_sha256();
    case PKI_SIG_RSA_PKCS1_SHA384:
    case PKI_SIG_RSA_PSS_SHA384:
    case PKI_SIG_ECDSA_SHA384: return EVP_sha384();
    case PKI_SIG_RSA_PKCS1_SHA512:
    case PKI_SIG_RSA_PSS_SHA512:
    case PKI_SIG_ECDSA_SHA512: return EVP_sha512();
    default: return NULL;
    }
}

size_t pki_key_field_len(pki_key_type t)
{
    switch (t) {
    case PKI_KEY_EC_P256: return 32;
    case PKI_KEY_EC_P384: return 48;
    case PKI_KEY_EC_P521: return 66;
    default: return 0;
    }
}

/* ------------------------------------------------------------ DER reading */

/* One TLV with the expected tag; its contents as a sub-view. Only the short
 * length form and the 1-2 byte long forms are accepted (minimal, as DER
 * requires): nothing we parse here is longer than 64 KiB. */
static bool der_get(buf_reader *r, uint8_t tag, buf_reader *out)
{
    buf_reader save = *r;
    uint8_t t, l0;
    size_t len;
    if (!buf_get_u8(r, &t) || t != tag || !buf_get_u8(r, &l0))
        goto fail;
    if (l0 < 0x80) {
        len = l0;
    } else if (l0 == 0x81) {
        uint8_t l;
        if (!buf_get_u8(r, &l) || l < 0x80)
            goto fail;
        len = l;
    } else if (l0 == 0x82) {
        uint16_t l;
        if (!buf_get_u16(r, &l) || l < 0x100)
            goto fail;
        len = l;
    } else {
        goto fail;
    }
    if (!buf_get_view(r, len, out))
        goto fail;
    return true;
fail:
    *r = save;
    return false;
}

static bool der_peek_tag(const buf_reader *r, uint8_t tag)
{
    uint8_t t;
    return buf_peek_u8(r, &t) && t == tag;
}

static bool view_is(const buf_reader *v, const oid_ref *oid)
{
    return v->len == oid->len && !memcmp(v->p, oid->der, oid->len);
}

static void oid_text(const buf_reader *oid, char *buf, size_t len)
{
    /* Dotted form for error messages; hex if it does not decode. */
    ASN1_OBJECT *obj = NULL;
    const unsigned char *p = oid->p;
    uint8_t tmp[2 + 127];
    if (oid->len <= 127) {
        tmp[0] = 0x06;
        tmp[1] = (uint8_t)oid->len;
        memcpy(tmp + 2, oid->p, oid->len);
        p = tmp;
        obj = d2i_ASN1_OBJECT(NULL, &p, (long)(oid->len + 2));
    }
    if (obj && OBJ_obj2txt(buf, (int)len, obj, 1) > 0) {
        ASN1_OBJECT_free(obj);
        return;
    }
    ASN1_OBJECT_free(obj);
    ERR_clear_error();
    snprintf(buf, len, "(undecodable OID)");
}

/* AlgorithmIdentifier of a hash: SEQUENCE { OID, NULL or nothing }. */
static bool parse_hash_algid(buf_reader *r, buf_reader *oid)
{
    buf_reader seq, null;
    if (!der_get(r, 0x30, &seq) || !der_get(&seq, 0x06, oid))
        return false;
    if (seq.len && (!der_get(&seq, 0x05, &null) || null.len))
        return false;
    return seq.len == 0;
}

/* A small non-negative DER INTEGER (salt length, trailer field). */
static bool parse_small_uint(buf_reader *r, unsigned *ret)
{
    buf_reader v;
    if (!der_get(r, 0x02, &v) || v.len == 0 || v.len > 2 || (v.p[0] & 0x80))
        return false;
    unsigned x = 0;
    for (size_t i = 0; i < v.len; i++)
        x = (x << 8) | v.p[i];
    *ret = x;
    return true;
}

/* RSASSA-PSS-params (RFC 4055 §3.1) into the PSS scheme they describe.
 * Absent fields take the defaults (SHA-1, MGF1-SHA-1, 20, 1), which we then
 * refuse since we only support SHA-2 with the salt as long as the hash. */
static int parse_pss_params(buf_reader params, pki_sig_scheme *ret, char *err, size_t err_len)
{
    buf_reader seq, inner, hash_oid = { NULL, 0 }, mgf_oid, mgf_hash_oid = { NULL, 0 };
    unsigned salt = 20, trailer = 1;
    if (!der_get(&params, 0x30, &seq) || params.len)
        goto malformed;
    if (der_peek_tag(&seq, 0xa0)) {
        if (!der_get(&seq, 0xa0, &inner) || !parse_hash_algid(&inner, &hash_oid) || inner.len)
            goto malformed;
    }
    if (der_peek_tag(&seq, 0xa1)) {
        buf_reader mgf;
        if (!der_get(&seq, 0xa1, &inner) || !der_get(&inner, 0x30, &mgf) || inner.len ||
            !der_get(&mgf, 0x06, &mgf_oid) || !parse_hash_algid(&mgf, &mgf_hash_oid) || mgf.len)
            goto malformed;
        if (!view_is(&mgf_oid, &(oid_ref)OID(OID_MGF1))) {
            pki_set_err(err, err_len, "RSASSA-PSS: mask generation function is not MGF1");
            return M2MVPN_E_NOTSUPP;
        }
    }
    if (der_peek_tag(&seq, 0xa2)) {
        if (!der_get(&seq, 0xa2, &inner) || !parse_small_uint(&inner, &salt) || inner.len)
            goto malformed;
    }
    if (der_peek_tag(&seq, 0xa3)) {
        if (!der_get(&seq, 0xa3, &inner) || !parse_small_uint(&inner, &trailer) || inner.len)
            goto malformed;
    }
    if (seq.len)
        goto malformed;
    if (trailer != 1) {
        pki_set_err(err, err_len, "RSASSA-PSS: trailer field %u", trailer);
        return M2MVPN_E_NOTSUPP;
    }
    for (int s = PKI_SIG_RSA_PSS_SHA256; s <= PKI_SIG_RSA_PSS_SHA512; s++) {
        if (!hash_oid.p || !view_is(&hash_oid, &scheme_oids[s].hash))
            continue;
        if (!mgf_hash_oid.p || !view_is(&mgf_hash_oid, &scheme_oids[s].hash)) {
            pki_set_err(err, err_len, "RSASSA-PSS: MGF1 hash differs from the message hash");
            return M2MVPN_E_NOTSUPP;
        }
        if (salt != scheme_oids[s].hash_len) {
            pki_set_err(err, err_len, "RSASSA-PSS: salt length %u (want %zu)", salt,
                        scheme_oids[s].hash_len);
            return M2MVPN_E_NOTSUPP;
        }
        *ret = (pki_sig_scheme)s;
        return 0;
    }
    pki_set_err(err, err_len, "RSASSA-PSS: hash is not SHA-256/384/512");
    return M2MVPN_E_NOTSUPP;
malformed:
    pki_set_err(err, err_len, "malformed RSASSA-PSS parameters");
    return M2MVPN_E_PROTOCOL;
}

int pki_algid_parse(const uint8_t *der, size_t len, pki_sig_scheme *ret, char *err, size_t err_len)
{
    if ((!der && len) || !ret)
        return M2MVPN_E_INVAL;
    buf_reader r = buf_reader_make(der, len), seq, oid;
    if (!der_get(&r, 0x30, &seq) || r.len || !der_get(&seq, 0x06, &oid) || oid.len == 0) {
        pki_set_err(err, err_len, "malformed AlgorithmIdentifier");
        return M2MVPN_E_PROTOCOL;
    }
    if (view_is(&oid, &(oid_ref)OID(OID_RSASSA_PSS))) {
        pki_sig_scheme s;
        int rc = parse_pss_params(seq, &s, err, err_len);
        if (rc == 0)
            *ret = s;
        return rc;
    }
    for (int s = PKI_SIG_RSA_PKCS1_SHA256; s < PKI_SIG_SCHEME_COUNT; s++) {
        if (pki_scheme_is_pss((pki_sig_scheme)s) || !view_is(&oid, &scheme_oids[s].sig))
            continue;
        /* PKCS#1: NULL parameters (RFC 4055 says NULL; some omit them).
         * ECDSA: parameters absent (RFC 5758 §3.2). */
        buf_reader null;
        bool ok = seq.len == 0 ||
                  (pki_scheme_is_rsa((pki_sig_scheme)s) && der_get(&seq, 0x05, &null) &&
                   null.len == 0 && seq.len == 0);
        if (!ok) {
            pki_set_err(err, err_len, "unexpected parameters in %s AlgorithmIdentifier",
                        pki_sig_scheme_name((pki_sig_scheme)s));
            return M2MVPN_E_PROTOCOL;
        }
        *ret = (pki_sig_scheme)s;
        return 0;
    }
    char name[96];
    oid_text(&oid, name, sizeof name);
    pki_set_err(err, err_len, "unsupported signature algorithm %s", name);
    return M2MVPN_E_NOTSUPP;
}

/* ------------------------------------------------------------ DER writing */

/* Tag + short-form length + contents; everything we write is < 128 bytes. */
static void der_put(buf_writer *w, uint8_t tag, const uint8_t *content, size_t len)
{
    if (len >= 0x80) {
        w->err = true;
        return;
    }
    buf_put_u8(w, tag);
    buf_put_u8(w, (uint8_t)len);
    buf_put_bytes(w, content, len);
}

static size_t put_hash_algid(uint8_t *out, size_t cap, const oid_ref *hash)
{
    /* SEQUENCE { OID, NULL }, as strongSwan and most PKIX code write it. */
    uint8_t inner[64];
    buf_writer w;
    buf_writer_init(&w, inner, sizeof inner);
    der_put(&w, 0x06, hash->der, hash->len);
    der_put(&w, 0x05, NULL, 0);
    buf_writer o;
    buf_writer_init(&o, out, cap);
    der_put(&o, 0x30, inner, buf_writer_len(&w));
    return buf_writer_ok(&w) && buf_writer_ok(&o) ? buf_writer_len(&o) : 0;
}

int pki_algid_encode(pki_sig_scheme scheme, uint8_t *out, size_t cap, size_t *ret_len)
{
    if (!out || !ret_len || scheme <= PKI_SIG_RSA_PKCS1_SHA1 || scheme >= PKI_SIG_SCHEME_COUNT)
        return M2MVPN_E_INVAL;
    uint8_t body[128];
    buf_writer b;
    buf_writer_init(&b, body, sizeof body);
    der_put(&b, 0x06, scheme_oids[scheme].sig.der, scheme_oids[scheme].sig.len);
    if (pki_scheme_is_pss(scheme)) {
        /* RSASSA-PSS-params { [0] hash, [1] MGF1(hash), [2] salt = hash length } */
        uint8_t halg[32], mgf[64], params[120], tmp[64];
        size_t hlen = put_hash_algid(halg, sizeof halg, &scheme_oids[scheme].hash);
        buf_writer m, p, t;
        buf_writer_init(&t, tmp, sizeof tmp);
        der_put(&t, 0x06, OID_MGF1, sizeof OID_MGF1);
        buf_put_bytes(&t, halg, hlen);
        buf_writer_init(&m, mgf, sizeof mgf);
        der_put(&m, 0x30, tmp, buf_writer_len(&t));
        buf_writer_init(&p, params, sizeof params);
        der_put(&p, 0xa0, halg, hlen);
        der_put(&p, 0xa1, mgf, buf_writer_len(&m));
        uint8_t salt[3] = { 0x02, 0x01, (uint8_t)scheme_oids[scheme].hash_len };
        der_put(&p, 0xa2, salt, sizeof salt);
        if (!hlen || !buf_writer_ok(&t) || !buf_writer_ok(&m) || !buf_writer_ok(&p))
            return M2MVPN_E_INVAL;
        der_put(&b, 0x30, params, buf_writer_len(&p));
    } else if (pki_scheme_is_rsa(scheme)) {
        der_put(&b, 0x05, NULL, 0);
    }
    buf_writer o;
    buf_writer_init(&o, out, cap);
    der_put(&o, 0x30, body, buf_writer_len(&b));
    if (!buf_writer_ok(&b) || !buf_writer_ok(&o))
        return M2MVPN_E_INVAL;
    *ret_len = buf_writer_len(&o);
    return 0;
}

/* ------------------------------------------------------------------ ECDSA */

/* One DER INTEGER of an ECDSA-Sig-Value, left-padded into out[field_len]. */
static bool der_int_to_fixed(buf_reader *r, uint8_t *out, size_t field_len)
{
    buf_reader v;
    if (!der_get(r, 0x02, &v) || v.len == 0 || (v.p[0] & 0x80))
        return false; /* r and s are positive */
    /* Drop the sign-padding zero (only one, and only if needed: DER). */
    if (v.len > 1 && v.p[0] == 0) {
        if (!(v.p[1] & 0x80))
            return false;
        v.p++;
        v.len--;
    }
    if (v.len > field_len)
        return false;
    memset(out, 0, field_len - v.len);
    memcpy(out + field_len - v.len, v.p, v.len);
    return true;
}

int pki_ecdsa_der_to_raw(const uint8_t *der, size_t der_len, size_t field_len,
                         uint8_t *out, size_t cap, size_t *ret_len)
{
    if ((!der && der_len) || !out || !ret_len || field_len == 0 || field_len > 66)
        return M2MVPN_E_INVAL;
    if (cap < 2 * field_len)
        return M2MVPN_E_INVAL;
    buf_reader r = buf_reader_make(der, der_len), seq;
    uint8_t tmp[2 * 66];
    if (!der_get(&r, 0x30, &seq) || r.len || !der_int_to_fixed(&seq, tmp, field_len) ||
        !der_int_to_fixed(&seq, tmp + field_len, field_len) || seq.len)
        return M2MVPN_E_PROTOCOL;
    memcpy(out, tmp, 2 * field_len);
    *ret_len = 2 * field_len;
    return 0;
}

static void put_der_uint(buf_writer *w, const uint8_t *p, size_t n)
{
    while (n > 1 && p[0] == 0) {
        p++;
        n--;
    }
    bool pad = p[0] & 0x80;
    buf_put_u8(w, 0x02);
    buf_put_u8(w, (uint8_t)(n + pad));
    if (pad)
        buf_put_u8(w, 0);
    buf_put_bytes(w, p, n);
}

int pki_ecdsa_raw_to_der(const uint8_t *raw, size_t raw_len,
                         uint8_t *out, size_t cap, size_t *ret_len)
{
    if ((!raw && raw_len) || !out || !ret_len)
        return M2MVPN_E_INVAL;
    if (raw_len == 0 || raw_len % 2 || raw_len > 2 * 66)
        return M2MVPN_E_PROTOCOL;
    size_t half = raw_len / 2;
    uint8_t body[2 * (2 + 1 + 66)];
    buf_writer b;
    buf_writer_init(&b, body, sizeof body);
    put_der_uint(&b, raw, half);
    put_der_uint(&b, raw + half, half);
    buf_writer o;
    buf_writer_init(&o, out, cap);
    size_t blen = buf_writer_len(&b);
    buf_put_u8(&o, 0x30);
    if (blen >= 0x80)
        buf_put_u8(&o, 0x81);
    buf_put_u8(&o, (uint8_t)blen);
    buf_put_bytes(&o, body, blen);
    if (!buf_writer_ok(&b) || !buf_writer_ok(&o))
        return M2MVPN_E_INVAL;
    *ret_len = buf_writer_len(&o);
    return 0;
}

/* ----------------------------------------------------------- verification */

static bool scheme_fits_key(pki_sig_scheme s, pki_key_type key)
{
    if (pki_scheme_is_rsa(s))
        return key == PKI_KEY_RSA;
    if (pki_scheme_is_ecdsa(s))
        return key == PKI_KEY_EC_P256 || key == PKI_KEY_EC_P384 || key == PKI_KEY_EC_P521;
    if (s == PKI_SIG_ED25519)
        return key == PKI_KEY_ED25519;
    return false;
}

int pki_verify_native(const pki_cert *signer, pki_sig_scheme scheme,
                      const uint8_t *data, size_t len,
                      const uint8_t *sig, size_t sig_len, char *err, size_t err_len)
{
    if (!signer || (!data && len) || (!sig && sig_len) || !pki_scheme_valid(scheme))
        return M2MVPN_E_INVAL;
    EVP_PKEY *pk = pki_cert_pubkey(signer);
    pki_key_type kt = pki_pkey_type(pk, NULL);
    if (!scheme_fits_key(scheme, kt)) {
        pki_set_err(err, err_len, "%s signature with a %s key", pki_sig_scheme_name(scheme),
                    pki_key_type_name(kt));
        return M2MVPN_E_AUTH_PEER;
    }
    int rc = M2MVPN_E_CRYPTO;
    EVP_PKEY_CTX *pctx = NULL;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || EVP_DigestVerifyInit(md, &pctx, pki_scheme_md(scheme), NULL, pk) != 1 ||
        !pki_scheme_set_padding(pctx, scheme))
        goto out;
    if (EVP_DigestVerify(md, sig, sig_len, data, len) == 1) {
        rc = 0;
    } else {
        pki_set_err(err, err_len, "signature invalid (%s)", pki_sig_scheme_name(scheme));
        rc = M2MVPN_E_AUTH_PEER;
    }
out:
    if (rc == M2MVPN_E_CRYPTO) {
        char why[96];
        pki_set_err(err, err_len, "signature check failed: %s", pki_openssl_reason(why, sizeof why));
    }
    ERR_clear_error();
    EVP_MD_CTX_free(md);
    return rc;
}

/* The classic method's scheme and key type (RFC 7296 §3.8, RFC 4754 §3). */
static bool classic_method(pki_auth_method m, pki_sig_scheme *s, pki_key_type *k)
{
    switch (m) {
    case PKI_AUTH_RSA_SIG: *s = PKI_SIG_RSA_PKCS1_SHA1; *k = PKI_KEY_RSA; return true;
    case PKI_AUTH_ECDSA_SHA256_P256: *s = PKI_SIG_ECDSA_SHA256; *k = PKI_KEY_EC_P256; return true;
    case PKI_AUTH_ECDSA_SHA384_P384: *s = PKI_SIG_ECDSA_SHA384; *k = PKI_KEY_EC_P384; return true;
    case PKI_AUTH_ECDSA_SHA512_P521: *s = PKI_SIG_ECDSA_SHA512; *k = PKI_KEY_EC_P521; return true;
    default: return false;
    }
}

bool pki_auth_scheme_fits(pki_auth_method method, pki_sig_scheme scheme, pki_key_type key)
{
    pki_sig_scheme cs;
    pki_key_type ck;
    if (method == PKI_AUTH_DIGITAL_SIGNATURE)
        return scheme != PKI_SIG_RSA_PKCS1_SHA1 && scheme_fits_key(scheme, key);
    return classic_method(method, &cs, &ck) && cs == scheme && ck == key;
}

int pki_auth_verify(const pki_cert *signer, uint8_t method,
                    const uint8_t *auth, size_t auth_len,
                    const uint8_t *signed_octets, size_t signed_len,
                    pki_sig_scheme *ret_scheme, char *err, size_t err_len)
{
    if (!signer || (!auth && auth_len) || (!signed_octets && signed_len))
        return M2MVPN_E_INVAL;
    pki_key_type kt = pki_cert_key_type(signer, NULL);
    pki_sig_scheme scheme;
    pki_key_type want;
    int rc;
    if (method == PKI_AUTH_DIGITAL_SIGNATURE) {
        /* RFC 7427 §3: 1 octet length, AlgorithmIdentifier, signature. */
        buf_reader r = buf_reader_make(auth, auth_len), algid;
        if (!buf_get_u8_length_prefixed(&r, &algid) || algid.len == 0 || r.len == 0) {
            pki_set_err(err, err_len, "truncated RFC 7427 AUTH data");
            return M2MVPN_E_PROTOCOL;
        }
        rc = pki_algid_parse(algid.p, algid.len, &scheme, err, err_len);
        if (rc < 0)
            return rc;
        if (!scheme_fits_key(scheme, kt)) {
            pki_set_err(err, err_len, "%s signature but the certificate has a %s key",
                        pki_sig_scheme_name(scheme), pki_key_type_name(kt));
            return M2MVPN_E_AUTH_PEER;
        }
        rc = pki_verify_native(signer, scheme, signed_octets, signed_len, r.p, r.len, err, err_len);
    } else if (classic_method((pki_auth_method)method, &scheme, &want)) {
        if (kt != want) {
            pki_set_err(err, err_len, "AUTH method %s but the certificate has a %s key",
                        pki_auth_method_name((pki_auth_method)method), pki_key_type_name(kt));
            return M2MVPN_E_AUTH_PEER;
        }
        if (pki_scheme_is_ecdsa(scheme)) {
            size_t fl = pki_key_field_len(kt), dlen;
            uint8_t der[2 * 66 + 16];
            if (auth_len != 2 * fl) {
                pki_set_err(err, err_len, "%s signature of %zu bytes (want %zu)",
                            pki_auth_method_name((pki_auth_method)method), auth_len, 2 * fl);
                return M2MVPN_E_PROTOCOL;
            }
            rc = pki_ecdsa_raw_to_der(auth, auth_len, der, sizeof der, &dlen);
            if (rc < 0)
                return rc;
            rc = pki_verify_native(signer, scheme, signed_octets, signed_len, der, dlen, err, err_len);
        } else {
            rc = pki_verify_native(signer, scheme, signed_octets, signed_len, auth, auth_len,
                                   err, err_len);
        }
    } else {
        pki_set_err(err, err_len, "unsupported AUTH method %u", method);
        return M2MVPN_E_NOTSUPP;
    }
    if (rc == 0 && ret_scheme)
        *ret_scheme = scheme;
    return rc;
}

/* --------------------------------------------------------- signing helpers */

int pki_auth_data_format(pki_auth_method method, pki_sig_scheme scheme, pki_key_type key,
                         const uint8_t *sig, size_t sig_len,
                         uint8_t *out, size_t cap, size_t *ret_len)
{
    if (!sig || !sig_len || !out || !ret_len || !pki_auth_scheme_fits(method, scheme, key))
        return M2MVPN_E_INVAL;
    if (method == PKI_AUTH_DIGITAL_SIGNATURE) {
        uint8_t algid[128];
        size_t alen;
        int rc = pki_algid_encode(scheme, algid, sizeof algid, &alen);
        if (rc < 0)
            return rc;
        buf_writer w;
        buf_writer_init(&w, out, cap);
        buf_put_u8(&w, (uint8_t)alen);
        buf_put_bytes(&w, algid, alen);
        buf_put_bytes(&w, sig, sig_len);
        if (!buf_writer_ok(&w))
            return M2MVPN_E_INVAL;
        *ret_len = buf_writer_len(&w);
        return 0;
    }
    if (pki_scheme_is_ecdsa(scheme))
        return pki_ecdsa_der_to_raw(sig, sig_len, pki_key_field_len(key), out, cap, ret_len);
    if (cap < sig_len)
        return M2MVPN_E_INVAL;
    memcpy(out, sig, sig_len);
    *ret_len = sig_len;
    return 0;
}

static const uint16_t supported_hashes[] = { PKI_HASH_SHA2_256, PKI_HASH_SHA2_384,
                                             PKI_HASH_SHA2_512, PKI_HASH_IDENTITY };

size_t pki_hash_algs_supported(const uint16_t **ret)
{
    if (ret)
        *ret = supported_hashes;
    return sizeof supported_hashes / sizeof supported_hashes[0];
}

static bool list_has(const uint16_t *l, size_t n, uint16_t v)
{
    for (size_t i = 0; i < n; i++)
        if (l[i] == v)
            return true;
    return false;
}

int pki_choose_auth(pki_key_type key, const uint16_t *peer_hashes, size_t n_peer,
                    bool rsa_pss, bool allow_sha1, pki_auth_method *ret_method,
                    pki_sig_scheme *ret_scheme)
{
    if (!ret_method || !ret_scheme || (n_peer && !peer_hashes))
        return M2MVPN_E_INVAL;
    pki_auth_method classic;
    uint16_t prefer;
    switch (key) {
    case PKI_KEY_RSA: classic = PKI_AUTH_RSA_SIG; prefer = PKI_HASH_SHA2_256; break;
    case PKI_KEY_EC_P256: classic = PKI_AUTH_ECDSA_SHA256_P256; prefer = PKI_HASH_SHA2_256; break;
    case PKI_KEY_EC_P384: classic = PKI_AUTH_ECDSA_SHA384_P384; prefer = PKI_HASH_SHA2_384; break;
    case PKI_KEY_EC_P521: classic = PKI_AUTH_ECDSA_SHA512_P521; prefer = PKI_HASH_SHA2_512; break;
    case PKI_KEY_ED25519:
        /* RFC 8420 §2: only with method 14 and the "Identity" hash. */
        if (!list_has(peer_hashes, n_peer, PKI_HASH_IDENTITY))
            return M2MVPN_E_NOTSUPP;
        *ret_method = PKI_AUTH_DIGITAL_SIGNATURE;
        *ret_scheme = PKI_SIG_ED25519;
        return 0;
    default: return M2MVPN_E_NOTSUPP;
    }
    /* Preferred hash first, then the strongest the peer also supports. */
    uint16_t order[4] = { prefer, PKI_HASH_SHA2_512, PKI_HASH_SHA2_384, PKI_HASH_SHA2_256 };
    for (size_t i = 0; i < 4; i++) {
        if (!list_has(peer_hashes, n_peer, order[i]))
            continue;
        int base = key == PKI_KEY_RSA ? (rsa_pss ? PKI_SIG_RSA_PSS_SHA256 : PKI_SIG_RSA_PKCS1_SHA256)
                                      : PKI_SIG_ECDSA_SHA256;
        *ret_method = PKI_AUTH_DIGITAL_SIGNATURE;
        *ret_scheme = (pki_sig_scheme)(base + (order[i] - PKI_HASH_SHA2_256));
        return 0;
    }
    /* No common SHA-2 hash (or no notify): the classic method (RFC 7427 §4).
     * For RSA that is PKCS#1 v1.5 with SHA-1, only when the caller allows it:
     * the notify that would have offered SHA-2 is unauthenticated, so taking
     * SHA-1 by default would let anyone on the path strip it and downgrade us. */
    if (key == PKI_KEY_RSA && !allow_sha1)
        return M2MVPN_E_NOTSUPP;
    pki_key_type k;
    classic_method(classic, ret_scheme, &k);
    *ret_method = classic;
    return 0;
}
