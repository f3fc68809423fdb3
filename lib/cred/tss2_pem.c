/* SPDX-License-Identifier: Apache-2.0 */
/* TSS2 PEM key files (contract: tss2_pem.h). */
#include "tss2_pem.h"

#include <m2mvpn/m2mvpn.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "core/buf.h"
#include "core/secmem.h"
#include "crypto/pki_internal.h"

/* 2.23.133.10.1.3: id-loadablekey (TCG); .4 importable, .5 sealed. */
static const uint8_t OID_LOADABLE[] = { 0x67, 0x81, 0x05, 0x0a, 0x01, 0x03 };
static const uint8_t OID_TCG_KEY_PREFIX[] = { 0x67, 0x81, 0x05, 0x0a, 0x01 };

#define FAIL(...) do { pki_set_err(err, err_len, "TSS2 key: " __VA_ARGS__); return M2MVPN_E_CERT; } while (0)

/* One DER TLV with tag `tag`: contents as a sub-view. Definite, minimal
 * lengths only (DER), at most 3 length bytes. */
static bool der_get(buf_reader *r, uint8_t tag, buf_reader *out)
{
    buf_reader save = *r;
    uint8_t t, l0;
    size_t len = 0;
    if (!buf_get_u8(r, &t) || t != tag || !buf_get_u8(r, &l0))
        goto fail;
    if (l0 < 0x80) {
        len = l0;
    } else {
        size_t n = l0 & 0x7f;
        if (n == 0 || n > 3)
            goto fail;
        for (size_t i = 0; i < n; i++) {
            uint8_t b;
            if (!buf_get_u8(r, &b) || (i == 0 && b == 0))
                goto fail;
            len = (len << 8) | b;
        }
        if (len < 0x80)
            goto fail;
    }
    if (!buf_get_view(r, len, out))
        goto fail;
    return true;
fail:
    *r = save;
    return false;
}

static bool der_next_is(const buf_reader *r, uint8_t tag)
{
    uint8_t t;
    return buf_peek_u8(r, &t) && t == tag;
}

int tss2_key_parse_der(const uint8_t *der, size_t len, tss2_key_blob *ret,
                       char *err, size_t err_len)
{
    if ((!der && len) || !ret)
        return M2MVPN_E_INVAL;
    buf_reader all = buf_reader_make(der, len), seq, oid;
    if (!der_get(&all, 0x30, &seq))
        FAIL("not a DER SEQUENCE");
    if (buf_remaining(&all))
        FAIL("%zu trailing bytes after the key", buf_remaining(&all));
    if (!der_get(&seq, 0x06, &oid))
        FAIL("no key type OID");
    if (oid.len != sizeof OID_LOADABLE || memcmp(oid.p, OID_LOADABLE, oid.len) != 0) {
        if (oid.len == sizeof OID_LOADABLE && memcmp(oid.p, OID_TCG_KEY_PREFIX, sizeof OID_TCG_KEY_PREFIX) == 0)
            FAIL("type 2.23.133.10.1.%u is not a loadable key (importable and sealed keys are not supported)",
                 oid.p[oid.len - 1]);
        FAIL("type is not a TPM key OID");
    }
    bool empty_auth = false;
    if (der_next_is(&seq, 0xa0)) {
        buf_reader ex, b;
        if (!der_get(&seq, 0xa0, &ex) || !der_get(&ex, 0x01, &b) || b.len != 1 || buf_remaining(&ex))
            FAIL("malformed emptyAuth");
        /* BER TRUE is any non-zero byte: tpm2-openssl writes 0x01, DER 0xff. */
        empty_auth = b.p[0] != 0x00;
    }
    if (der_next_is(&seq, 0xa1) || der_next_is(&seq, 0xa3))
        FAIL("keys with a policy are not supported");
    if (der_next_is(&seq, 0xa2))
        FAIL("keys with an import secret are not supported");
    buf_reader parent, pub, priv;
    if (!der_get(&seq, 0x02, &parent))
        FAIL("no parent handle");
    /* A non-negative INTEGER below 2^32: 1..4 bytes, or 5 with a 0x00 sign byte. */
    if (parent.len == 0 || parent.len > 5 || (parent.p[0] & 0x80) ||
        (parent.len == 5 && parent.p[0] != 0) ||
        (parent.len > 1 && parent.p[0] == 0 && !(parent.p[1] & 0x80)))
        FAIL("parent is not a 32-bit handle");
    uint32_t handle = 0;
    for (size_t i = 0; i < parent.len; i++)
        handle = (handle << 8) | parent.p[i];
    if (!der_get(&seq, 0x04, &pub))
        FAIL("no public part");
    if (!der_get(&seq, 0x04, &priv))
        FAIL("no private part");
    if (buf_remaining(&seq))
        FAIL("unexpected fields after the private part");
    if (pub.len < 2 || pub.len > TSS2_BLOB_MAX || priv.len < 2 || priv.len > TSS2_BLOB_MAX)
        FAIL("public or private part has an impossible size (%zu, %zu bytes)", pub.len, priv.len);
    ret->empty_auth = empty_auth;
    ret->parent = handle;
    memcpy(ret->pub, pub.p, pub.len);
    ret->pub_len = pub.len;
    memcpy(ret->priv, priv.p, priv.len);
    ret->priv_len = priv.len;
    return 0;
}

int tss2_key_parse_pem(const uint8_t *pem, size_t len, tss2_key_blob *ret,
                       char *err, size_t err_len)
{
    if ((!pem && len) || !ret || len > INT32_MAX)
        return M2MVPN_E_INVAL;
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (!bio)
        return M2MVPN_E_NOMEM;
    int rc = M2MVPN_E_CERT;
    bool found = false;
    for (;;) {
        char *name = NULL, *header = NULL;
        unsigned char *data = NULL;
        long dlen = 0;
        if (PEM_read_bio(bio, &name, &header, &data, &dlen) != 1)
            break;
        if (strcmp(name, TSS2_PEM_LABEL) == 0) {
            found = true;
            rc = tss2_key_parse_der(data, (size_t)dlen, ret, err, err_len);
        }
        OPENSSL_free(name);
        OPENSSL_free(header);
        if (data)
            OPENSSL_cleanse(data, (size_t)dlen);
        OPENSSL_free(data);
        if (found)
            break;
    }
    ERR_clear_error();
    BIO_free(bio);
    if (!found)
        pki_set_err(err, err_len, "TSS2 key: no \"-----BEGIN " TSS2_PEM_LABEL "-----\" block");
    return rc;
}

/* DER length octets. */
static void put_len(buf_writer *w, size_t n)
{
    if (n < 0x80) {
        buf_put_u8(w, (uint8_t)n);
    } else if (n < 0x100) {
        buf_put_u8(w, 0x81);
        buf_put_u8(w, (uint8_t)n);
    } else {
        buf_put_u8(w, 0x82);
        buf_put_u16(w, (uint16_t)n);
    }
}

static size_t len_octets(size_t n)
{
    return n < 0x80 ? 1 : n < 0x100 ? 2 : 3;
}

int tss2_key_encode_der(const tss2_key_blob *k, uint8_t *out, size_t cap, size_t *ret_len)
{
    if (!k || !out || !ret_len || k->pub_len == 0 || k->priv_len == 0 ||
        k->pub_len > TSS2_BLOB_MAX || k->priv_len > TSS2_BLOB_MAX)
        return M2MVPN_E_INVAL;
    uint8_t handle[5];
    size_t hl = 0;
    /* Minimal two's complement of the handle. */
    uint8_t be[4];
    buf_store_be32(be, k->parent);
    size_t skip = 0;
    while (skip < 3 && be[skip] == 0 && !(be[skip + 1] & 0x80))
        skip++;
    if (be[skip] & 0x80)
        handle[hl++] = 0;
    memcpy(handle + hl, be + skip, 4 - skip);
    hl += 4 - skip;
    size_t body = 2 + sizeof OID_LOADABLE + (k->empty_auth ? 5 : 0) + 2 + hl +
                  1 + len_octets(k->pub_len) + k->pub_len + 1 + len_octets(k->priv_len) + k->priv_len;
    buf_writer w;
    buf_writer_init(&w, out, cap);
    buf_put_u8(&w, 0x30);
    put_len(&w, body);
    buf_put_u8(&w, 0x06);
    put_len(&w, sizeof OID_LOADABLE);
    buf_put_bytes(&w, OID_LOADABLE, sizeof OID_LOADABLE);
    if (k->empty_auth) {
        static const uint8_t ea[] = { 0xa0, 0x03, 0x01, 0x01, 0xff };
        buf_put_bytes(&w, ea, sizeof ea);
    }
    buf_put_u8(&w, 0x02);
    put_len(&w, hl);
    buf_put_bytes(&w, handle, hl);
    buf_put_u8(&w, 0x04);
    put_len(&w, k->pub_len);
    buf_put_bytes(&w, k->pub, k->pub_len);
    buf_put_u8(&w, 0x04);
    put_len(&w, k->priv_len);
    buf_put_bytes(&w, k->priv, k->priv_len);
    if (!buf_writer_ok(&w))
        return M2MVPN_E_INVAL;
    *ret_len = buf_writer_len(&w);
    return 0;
}

int tss2_key_encode_pem(const tss2_key_blob *k, char **ret)
{
    if (!k || !ret)
        return M2MVPN_E_INVAL;
    uint8_t der[2 * TSS2_BLOB_MAX + 64];
    size_t len = 0;
    int rc = tss2_key_encode_der(k, der, sizeof der, &len);
    if (rc < 0)
        return rc;
    BIO *bio = BIO_new(BIO_s_mem());
    char *text = NULL;
    rc = M2MVPN_E_NOMEM;
    if (bio && PEM_write_bio(bio, TSS2_PEM_LABEL, "", der, (long)len) > 0) {
        char *mem = NULL;
        long n = BIO_get_mem_data(bio, &mem);
        if (n > 0 && (text = malloc((size_t)n + 1))) {
            memcpy(text, mem, (size_t)n);
            text[n] = '\0';
            *ret = text;
            rc = 0;
        }
    }
    BIO_free(bio);
    secure_wipe(der, sizeof der);
    ERR_clear_error();
    return rc;
}
