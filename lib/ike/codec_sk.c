/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The Encrypted payload SK (RFC 7296 §3.14, RFC 5282 for AEAD): byte layout
 * for building in place, splitting and unpadding on receipt. The cipher is
 * reached only through ike_sk_cipher, so this file knows no keys.
 */
#include "ike/codec.h"

#include <string.h>

#include <m2mvpn/m2mvpn.h>

#include "core/secmem.h"

size_t ike_sk_pad_len(size_t inner_len, size_t block_len)
{
    if (block_len <= 1)
        return 0;
    return (block_len - (inner_len + 1) % block_len) % block_len;
}

size_t ike_sk_message_len(size_t inner_len, const ike_sk_cipher *c)
{
    return IKE_HEADER_LEN + IKE_GENERIC_HEADER_LEN + c->iv_len + inner_len +
           ike_sk_pad_len(inner_len, c->block_len) + 1 + c->icv_len;
}

bool ike_sk_cipher_valid(const ike_sk_cipher *c)
{
    /* The Pad Length byte caps padding (and so the block) at 255 bytes. */
    return c && c->block_len >= 1 && c->block_len <= 255 && c->iv_len <= 255 &&
           c->icv_len <= 255;
}

int ike_sk_begin(ike_sk_builder *sk, buf_writer *w, size_t hdr_at, const ike_sk_cipher *cipher)
{
    if (!ike_sk_cipher_valid(cipher) || !buf_writer_ok(w) ||
        buf_writer_len(w) != hdr_at + IKE_HEADER_LEN)
        return M2MVPN_E_INVAL;
    w->p[hdr_at + IKE_HDR_NEXT_PAYLOAD_AT] = IKE_PL_SK;
    sk->w = w;
    sk->hdr_at = hdr_at;
    sk->sk_at = buf_writer_len(w);
    sk->iv_len = cipher->iv_len;
    sk->icv_len = cipher->icv_len;
    sk->block_len = cipher->block_len;
    buf_put_u8(w, IKE_PL_NONE);     /* patched to the first inner payload */
    buf_put_u8(w, 0);
    buf_put_u16(w, 0);
    buf_put_zeros(w, sk->iv_len);
    ike_chain_writer_init(&sk->inner, w, sk->sk_at);
    return buf_writer_ok(w) ? 0 : M2MVPN_E_INVAL;
}

int ike_sk_finish(ike_sk_builder *sk, ike_sk_spans *ret)
{
    buf_writer *w = sk->w;
    ike_chain_writer_finish(&sk->inner);
    if (!buf_writer_ok(w))
        return M2MVPN_E_INVAL;
    size_t pt_at = sk->sk_at + IKE_GENERIC_HEADER_LEN + sk->iv_len;
    size_t inner_len = buf_writer_len(w) - pt_at;
    size_t pad = ike_sk_pad_len(inner_len, sk->block_len);
    buf_put_zeros(w, pad);
    buf_put_u8(w, (uint8_t)pad);
    size_t icv_at = buf_writer_len(w);
    buf_put_zeros(w, sk->icv_len);
    if (!buf_writer_ok(w) || buf_writer_len(w) - sk->sk_at > UINT16_MAX) {
        w->err = true;
        return M2MVPN_E_INVAL;
    }
    buf_patch_u16(w, sk->sk_at + 2, (uint16_t)(buf_writer_len(w) - sk->sk_at));
    ike_message_finish(w, sk->hdr_at);
    if (!buf_writer_ok(w))
        return M2MVPN_E_INVAL;
    ret->aad = (ike_span){ sk->hdr_at, pt_at - sk->iv_len - sk->hdr_at };
    ret->iv = (ike_span){ pt_at - sk->iv_len, sk->iv_len };
    ret->plaintext = (ike_span){ pt_at, icv_at - pt_at };
    ret->icv = (ike_span){ icv_at, sk->icv_len };
    ret->integ = (ike_span){ sk->hdr_at, icv_at - sk->hdr_at };
    return 0;
}

int ike_sk_seal(uint8_t *msg, const ike_sk_spans *spans, const ike_sk_cipher *cipher)
{
    if (!ike_sk_cipher_valid(cipher) || !cipher->seal || spans->iv.len != cipher->iv_len ||
        spans->icv.len != cipher->icv_len)
        return M2MVPN_E_INVAL;
    ike_sk_seal_io io = {
        .aad = msg + spans->aad.off, .aad_len = spans->aad.len,
        .iv = msg + spans->iv.off,
        .text = msg + spans->plaintext.off, .text_len = spans->plaintext.len,
        .icv = msg + spans->icv.off,
        .integ = msg + spans->integ.off, .integ_len = spans->integ.len,
    };
    int rc = cipher->seal(cipher->ctx, &io);
    return rc < 0 ? rc : 0;
}

int ike_sk_wrap(const ike_header *hdr, const uint8_t *inner, size_t inner_len,
                uint8_t first_type, const ike_sk_cipher *cipher, buf_writer *w)
{
    ike_header h = *hdr;
    ike_sk_builder sk;
    ike_sk_spans spans;
    size_t hdr_at = buf_writer_len(w);

    if ((inner_len == 0) != (first_type == IKE_PL_NONE))
        return M2MVPN_E_INVAL;
    h.next_payload = IKE_PL_SK;
    h.length = 0;
    ike_header_build(w, &h);
    int rc = ike_sk_begin(&sk, w, hdr_at, cipher);
    if (rc < 0)
        return rc;
    buf_put_bytes(w, inner, inner_len);
    if (!buf_writer_ok(w))
        return M2MVPN_E_INVAL;
    w->p[sk.sk_at] = first_type;
    rc = ike_sk_finish(&sk, &spans);
    if (rc < 0)
        return rc;
    return ike_sk_seal(w->p, &spans, cipher);
}

int ike_sk_split(buf_reader body, size_t iv_len, size_t icv_len, size_t block_len,
                 ike_sk_parts *ret, ike_diag *diag)
{
    if (block_len == 0)
        block_len = 1;
    if (body.len < iv_len + icv_len + 1)
        return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, IKE_PL_SK,
                            "SK: %zu bytes cannot hold IV %zu + ICV %zu + ciphertext",
                            body.len, iv_len, icv_len);
    size_t ct_len = body.len - iv_len - icv_len;
    if (ct_len % block_len)
        return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, IKE_PL_SK,
                            "SK: ciphertext of %zu bytes is not a multiple of the %zu-byte block",
                            ct_len, block_len);
    buf_get_view(&body, iv_len, &ret->iv);
    buf_get_view(&body, ct_len, &ret->ct);
    buf_get_view(&body, icv_len, &ret->icv);
    return 0;
}

int ike_sk_strip_padding(const uint8_t *plain, size_t len, size_t *inner_len, ike_diag *diag)
{
    if (len == 0)
        return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, IKE_PL_SK,
                            "SK: no Pad Length byte");
    uint8_t pad = plain[len - 1];
    if ((size_t)pad >= len)
        return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, IKE_PL_SK,
                            "SK: Pad Length %u exceeds the %zu bytes of plaintext",
                            pad, len - 1);
    *inner_len = len - 1 - pad;
    return 0;
}

int ike_sk_decrypt_payload(buf_reader raw, const ike_payload *pl, size_t hdr_extra,
                           buf_reader ct_body, const ike_sk_cipher *cipher,
                           uint8_t *out, size_t out_cap, size_t *inner_len, ike_diag *diag)
{
    ike_sk_parts parts;
    if (!ike_sk_cipher_valid(cipher) || !cipher->open)
        return M2MVPN_E_INVAL;
    int rc = ike_sk_split(ct_body, cipher->iv_len, cipher->icv_len, cipher->block_len,
                          &parts, diag);
    if (rc < 0)
        return rc;
    if (out_cap < parts.ct.len)
        return ike_diag_set(diag, M2MVPN_E_INVAL, 0, pl->type,
                            "SK: %zu bytes of ciphertext, output holds %zu",
                            parts.ct.len, out_cap);
    size_t aad_len = pl->offset + IKE_GENERIC_HEADER_LEN + hdr_extra;
    ike_sk_open_io io = {
        .aad = raw.p, .aad_len = aad_len,
        .iv = parts.iv.p,
        .ct = parts.ct.p, .ct_len = parts.ct.len,
        .icv = parts.icv.p,
        .integ = raw.p, .integ_len = (size_t)(parts.icv.p - raw.p),
        .out = out,
    };
    rc = cipher->open(cipher->ctx, &io);
    if (rc < 0) {
        secure_wipe(out, parts.ct.len);
        return ike_diag_set(diag, M2MVPN_E_CRYPTO, 0, pl->type,
                            "%s: integrity check or decryption failed",
                            pl->type == IKE_PL_SKF ? "SKF" : "SK");
    }
    rc = ike_sk_strip_padding(out, parts.ct.len, inner_len, diag);
    if (rc < 0)
        secure_wipe(out, parts.ct.len);
    return rc;
}

int ike_sk_open(const ike_message *msg, const ike_sk_cipher *cipher,
                uint8_t *out, size_t out_cap, ike_chain *inner, ike_diag *diag)
{
    const ike_chain *c = &msg->chain;
    if (c->n == 0 || c->pl[c->n - 1].type != IKE_PL_SK)
        return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, 0,
                            "message has no Encrypted (SK) payload");
    const ike_payload *sk = &c->pl[c->n - 1];
    size_t inner_len;
    int rc = ike_sk_decrypt_payload(msg->raw, sk, 0, sk->body, cipher, out, out_cap,
                                    &inner_len, diag);
    if (rc < 0)
        return rc;
    return ike_inner_chain_parse(out, inner_len, sk->next_type, inner, diag);
}

int ike_inner_chain_parse(const uint8_t *plain, size_t len, uint8_t first,
                          ike_chain *ret, ike_diag *diag)
{
    int rc = ike_chain_parse(buf_reader_make(plain, len), first, 0, ret, diag);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < ret->n; i++)
        if (ret->pl[i].type == IKE_PL_SK || ret->pl[i].type == IKE_PL_SKF)
            return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX,
                                ret->pl[i].type, "encrypted payload inside an encrypted payload");
    return 0;
}
