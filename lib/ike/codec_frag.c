/* SPDX-License-Identifier: Apache-2.0 */
/*
 * IKEv2 message fragmentation (RFC 7383): splitting an inner payload chain
 * into Encrypted Fragment (SKF) messages, and bounded reassembly that only
 * ever stores fragments which passed the integrity check.
 */
#include "ike/codec.h"

#include <stdlib.h>
#include <string.h>

#include <m2mvpn/m2mvpn.h>

#include "core/secmem.h"

#define SKF_FIELDS_LEN 4    /* Fragment Number + Total Fragments */

/* Bytes of inner chain that fit in one fragment message of max_msg_len. */
static size_t frag_capacity(const ike_sk_cipher *c, size_t max_msg_len)
{
    size_t overhead = IKE_HEADER_LEN + IKE_SKF_HEADER_LEN + c->iv_len + c->icv_len;
    if (max_msg_len <= overhead)
        return 0;
    size_t room = max_msg_len - overhead;
    room -= room % c->block_len;    /* ciphertext is whole blocks */
    return room ? room - 1 : 0;     /* one byte for Pad Length */
}

static int build_fragment(buf_writer *w, const ike_header *hdr, uint16_t number, uint16_t total,
                          uint8_t next, const uint8_t *data, size_t len,
                          const ike_sk_cipher *c, ike_span *ret)
{
    size_t at = buf_writer_len(w);
    ike_header h = *hdr;
    h.next_payload = IKE_PL_SKF;
    h.length = 0;
    ike_header_build(w, &h);
    size_t skf_at = buf_writer_len(w);
    buf_put_u8(w, next);
    buf_put_u8(w, 0);
    buf_put_u16(w, 0);
    buf_put_u16(w, number);
    buf_put_u16(w, total);
    size_t iv_at = buf_writer_len(w);
    buf_put_zeros(w, c->iv_len);
    size_t pt_at = buf_writer_len(w);
    buf_put_bytes(w, data, len);
    size_t pad = ike_sk_pad_len(len, c->block_len);
    buf_put_zeros(w, pad);
    buf_put_u8(w, (uint8_t)pad);
    size_t icv_at = buf_writer_len(w);
    buf_put_zeros(w, c->icv_len);
    if (!buf_writer_ok(w) || buf_writer_len(w) - skf_at > UINT16_MAX)
        return M2MVPN_E_INVAL;
    buf_patch_u16(w, skf_at + 2, (uint16_t)(buf_writer_len(w) - skf_at));
    ike_message_finish(w, at);
    if (!buf_writer_ok(w))
        return M2MVPN_E_INVAL;

    ike_sk_spans spans = {
        /* RFC 7383 §2.5: the SKF header incl. both fragment fields is AAD. */
        .aad = { at, iv_at - at },
        .iv = { iv_at, c->iv_len },
        .plaintext = { pt_at, icv_at - pt_at },
        .icv = { icv_at, c->icv_len },
        .integ = { at, icv_at - at },
    };
    int rc = ike_sk_seal(w->p, &spans, c);
    if (rc < 0)
        return rc;
    *ret = (ike_span){ at, buf_writer_len(w) - at };
    return 0;
}

int ike_frag_build(const ike_header *hdr, const uint8_t *inner, size_t inner_len,
                   uint8_t first_type, const ike_sk_cipher *cipher, size_t max_msg_len,
                   uint8_t *out, size_t out_cap, ike_span *frags, size_t max_frags,
                   size_t *n_frags)
{
    if (!ike_sk_cipher_valid(cipher) || inner_len == 0 || first_type == IKE_PL_NONE)
        return M2MVPN_E_INVAL;
    size_t cap = frag_capacity(cipher, max_msg_len);
    if (cap == 0)
        return M2MVPN_E_INVAL;
    size_t n = (inner_len + cap - 1) / cap;
    if (n > IKE_FRAG_MAX_FRAGMENTS || n > max_frags)
        return M2MVPN_E_INVAL;

    buf_writer w;
    buf_writer_init(&w, out, out_cap);
    for (size_t i = 0; i < n; i++) {
        size_t off = i * cap;
        size_t len = inner_len - off < cap ? inner_len - off : cap;
        int rc = build_fragment(&w, hdr, (uint16_t)(i + 1), (uint16_t)n,
                                i == 0 ? first_type : IKE_PL_NONE, inner + off, len,
                                cipher, &frags[i]);
        if (rc < 0)
            return rc;
    }
    *n_frags = n;
    return 0;
}

int ike_skf_parse(buf_reader body, size_t iv_len, size_t icv_len, size_t block_len,
                  ike_skf *ret, ike_diag *diag)
{
    uint16_t number, total;
    if (!buf_get_u16(&body, &number) || !buf_get_u16(&body, &total))
        return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, IKE_PL_SKF,
                            "SKF: %zu bytes, need at least 4", body.len);
    if (number == 0 || total == 0 || number > total)
        return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, IKE_PL_SKF,
                            "SKF: fragment %u of %u is out of range", number, total);
    int rc = ike_sk_split(body, iv_len, icv_len, block_len, &ret->parts, diag);
    if (rc < 0)
        return rc;
    ret->number = number;
    ret->total = total;
    return 0;
}

/* ------------------------------------------------------------ reassembly */

void ike_frag_reasm_init(ike_frag_reasm *r)
{
    memset(r, 0, sizeof(*r));
}

void ike_frag_reasm_reset(ike_frag_reasm *r)
{
    for (size_t i = 0; i < IKE_FRAG_MAX_FRAGMENTS; i++)
        if (r->frag[i])
            secure_free(r->frag[i], r->frag_len[i]);
    if (r->joined)
        secure_free(r->joined, r->joined_len);
    ike_frag_reasm_init(r);
}

static int join(ike_frag_reasm *r, ike_chain *inner, ike_diag *diag)
{
    r->joined = malloc(r->bytes ? r->bytes : 1);
    if (!r->joined)
        return M2MVPN_E_NOMEM;
    r->joined_len = r->bytes;
    size_t at = 0;
    for (size_t i = 0; i < r->total; i++) {
        if (r->frag_len[i])
            memcpy(r->joined + at, r->frag[i], r->frag_len[i]);
        at += r->frag_len[i];
    }
    ike_chain scratch;
    ike_chain *c = inner ? inner : &scratch;
    return ike_inner_chain_parse(r->joined, r->joined_len, r->first_type, c, diag);
}

int ike_frag_add(ike_frag_reasm *r, const ike_message *msg, const ike_sk_cipher *cipher,
                 ike_chain *inner, ike_diag *diag)
{
    const ike_chain *c = &msg->chain;
    if (!ike_sk_cipher_valid(cipher))
        return M2MVPN_E_INVAL;
    if (c->n == 0 || c->pl[c->n - 1].type != IKE_PL_SKF)
        return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, 0,
                            "message has no Encrypted Fragment (SKF) payload");
    const ike_payload *pl = &c->pl[c->n - 1];
    ike_skf skf;
    int rc = ike_skf_parse(pl->body, cipher->iv_len, cipher->icv_len, cipher->block_len,
                           &skf, diag);
    if (rc < 0)
        return rc;

    /* Everything decidable without decrypting, before touching any state. */
    if (skf.total > IKE_FRAG_MAX_FRAGMENTS)
        return ike_diag_set(diag, M2MVPN_E_PROTOCOL, 0, IKE_PL_SKF,
                            "SKF: %u fragments, at most %d accepted", skf.total,
                            IKE_FRAG_MAX_FRAGMENTS);
    bool response = (msg->hdr.flags & IKE_FLAG_RESPONSE) != 0;
    bool same = r->active && msg->hdr.message_id == r->message_id &&
                msg->hdr.exchange == r->exchange && response == r->response;
    if (same && skf.total < r->total)
        return ike_diag_set(diag, M2MVPN_E_PROTOCOL, 0, IKE_PL_SKF,
                            "SKF: Total Fragments %u below the %u already seen",
                            skf.total, r->total);
    if (same && skf.total == r->total && (r->frag[skf.number - 1] || r->joined))
        return 0;   /* duplicate, or the message is already complete */

    size_t ct_len = skf.parts.ct.len;
    uint8_t *plain = malloc(ct_len);
    if (!plain)
        return M2MVPN_E_NOMEM;
    size_t len;
    buf_reader ct_body = buf_reader_make(pl->body.p + SKF_FIELDS_LEN,
                                         pl->body.len - SKF_FIELDS_LEN);
    rc = ike_sk_decrypt_payload(msg->raw, pl, SKF_FIELDS_LEN, ct_body, cipher,
                                plain, ct_len, &len, diag);
    if (rc < 0) {
        free(plain);
        return rc;
    }
    /* Authenticated: now the state may change. Another message replaces the
     * one being reassembled; a larger Total Fragments means the peer
     * re-fragmented (smaller PMTU): start over (RFC 7383 §2.6.1). */
    if (r->active && (!same || skf.total > r->total))
        ike_frag_reasm_reset(r);
    if (r->bytes + len > IKE_FRAG_MAX_TOTAL_BYTES) {
        secure_free(plain, ct_len);
        return ike_diag_set(diag, M2MVPN_E_PROTOCOL, 0, IKE_PL_SKF,
                            "SKF: reassembled message would exceed %d bytes",
                            IKE_FRAG_MAX_TOTAL_BYTES);
    }
    if (!r->active) {
        r->active = true;
        r->message_id = msg->hdr.message_id;
        r->exchange = msg->hdr.exchange;
        r->response = response;
        r->total = skf.total;
    }
    /* Padding is wiped now, so reset only needs to wipe the used part. */
    if (len < ct_len)
        secure_wipe(plain + len, ct_len - len);
    r->frag[skf.number - 1] = plain;
    r->frag_len[skf.number - 1] = len;
    if (skf.number == 1)
        r->first_type = pl->next_type;
    r->received++;
    r->bytes += len;
    if (r->received < r->total)
        return 0;
    rc = join(r, inner, diag);
    return rc < 0 ? rc : 1;
}
