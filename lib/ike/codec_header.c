/* SPDX-License-Identifier: Apache-2.0 */
/*
 * IKE header, port-4500 framing, the generic payload chain (parse and write).
 * The chain walker validates every generic header before any typed parser
 * sees a byte of the payload (the OpenBSD iked discipline).
 */
#include "ike/codec.h"

#include <m2mvpn/m2mvpn.h>

static const char *pl_name(unsigned t)
{
    const char *n = ike_payload_name(t);
    return n ? n : "unknown";
}

int ike_header_parse(const buf_reader *msg, ike_header *ret, ike_diag *diag)
{
    buf_reader r = *msg;
    ike_header h;
    uint8_t version;

    if (buf_remaining(&r) < IKE_HEADER_LEN)
        return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, 0,
                            "message of %zu bytes is shorter than the %d-byte IKE header",
                            buf_remaining(&r), IKE_HEADER_LEN);
    if (!buf_get_u64(&r, &h.spi_i) || !buf_get_u64(&r, &h.spi_r) ||
        !buf_get_u8(&r, &h.next_payload) || !buf_get_u8(&r, &version) ||
        !buf_get_u8(&r, &h.exchange) || !buf_get_u8(&r, &h.flags) ||
        !buf_get_u32(&r, &h.message_id) || !buf_get_u32(&r, &h.length))
        return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, 0,
                            "truncated IKE header");
    h.major = version >> 4;
    h.minor = version & 0x0f;
    if (h.major > IKE_VERSION_MAJOR)
        return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_MAJOR_VERSION, 0,
                            "IKE major version %u is not supported (only 2)", h.major);
    if (h.major < IKE_VERSION_MAJOR)
        return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, 0,
                            "IKE major version %u (IKEv1?) is not IKEv2", h.major);
    if (h.length != msg->len)
        return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, 0,
                            "IKE header length %u differs from datagram length %zu",
                            h.length, msg->len);
    if (h.spi_i == 0)
        return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, 0,
                            "initiator SPI is zero");
    *ret = h;
    return 0;
}

void ike_header_build(buf_writer *w, const ike_header *hdr)
{
    buf_put_u64(w, hdr->spi_i);
    buf_put_u64(w, hdr->spi_r);
    buf_put_u8(w, hdr->next_payload);
    buf_put_u8(w, (IKE_VERSION_MAJOR << 4) | IKE_VERSION_MINOR);
    buf_put_u8(w, hdr->exchange);
    buf_put_u8(w, hdr->flags);
    buf_put_u32(w, hdr->message_id);
    buf_put_u32(w, hdr->length);
}

void ike_message_finish(buf_writer *w, size_t hdr_at)
{
    if (!buf_writer_ok(w))
        return;
    if (hdr_at > buf_writer_len(w) || buf_writer_len(w) - hdr_at > UINT32_MAX) {
        w->err = true;
        return;
    }
    buf_patch_u32(w, hdr_at + IKE_HDR_LENGTH_AT, (uint32_t)(buf_writer_len(w) - hdr_at));
}

ike_udp_kind ike_udp_classify(buf_reader *dgram)
{
    if (dgram->len == 1 && dgram->p[0] == 0xff)
        return IKE_UDP_KEEPALIVE;
    if (dgram->len < IKE_NON_ESP_MARKER_LEN)
        return IKE_UDP_INVALID;
    uint32_t marker = buf_load_be32(dgram->p);
    if (marker != 0)
        return IKE_UDP_ESP;
    buf_skip(dgram, IKE_NON_ESP_MARKER_LEN);
    return IKE_UDP_IKE;
}

void ike_put_non_esp_marker(buf_writer *w)
{
    buf_put_zeros(w, IKE_NON_ESP_MARKER_LEN);
}

int ike_chain_parse(buf_reader region, uint8_t first, size_t base_offset,
                    ike_chain *ret, ike_diag *diag)
{
    buf_reader r = region;
    uint8_t type = first;

    ret->n = 0;
    ret->n_skipped = 0;
    while (type != IKE_PL_NONE) {
        size_t left = buf_remaining(&r);
        size_t offset = base_offset + (region.len - left);
        uint8_t next, flags;
        uint16_t len;
        buf_reader body;

        if (left < IKE_GENERIC_HEADER_LEN)
            return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, type,
                                "payload %u (%s): generic header needs 4 bytes, %zu left",
                                type, pl_name(type), left);
        buf_reader hdr = r;
        buf_get_u8(&hdr, &next);
        buf_get_u8(&hdr, &flags);
        buf_get_u16(&hdr, &len);
        if (len < IKE_GENERIC_HEADER_LEN)
            return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, type,
                                "payload %u (%s): length %u is shorter than its header",
                                type, pl_name(type), len);
        if (len > left)
            return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, type,
                                "payload %u (%s): length %u exceeds remaining %zu",
                                type, pl_name(type), len, left);
        buf_skip(&r, IKE_GENERIC_HEADER_LEN);
        buf_get_view(&r, len - IKE_GENERIC_HEADER_LEN, &body);

        bool critical = (flags & 0x80) != 0;
        if (!ike_payload_type_known(type)) {
            /* RFC 7296 §2.5: skip unknown payloads unless marked critical. */
            if (critical)
                return ike_diag_set(diag, M2MVPN_E_PROTOCOL,
                                    IKE_N_UNSUPPORTED_CRITICAL_PAYLOAD, type,
                                    "payload %u: unknown type marked critical", type);
            ret->n_skipped++;
        } else {
            if (ret->n == IKE_MAX_PAYLOADS)
                return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, type,
                                    "more than %d payloads", IKE_MAX_PAYLOADS);
            ike_payload *p = &ret->pl[ret->n++];
            p->type = type;
            p->next_type = next;
            p->critical = critical;
            p->offset = offset;
            p->body = body;
        }
        if (type == IKE_PL_SK || type == IKE_PL_SKF) {
            /* Its Next Payload names the first inner payload; the outer
             * chain ends here, and nothing may follow it. */
            if (buf_remaining(&r) != 0)
                return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, type,
                                    "payload %u (%s) must be the last, %zu bytes follow",
                                    type, pl_name(type), buf_remaining(&r));
            return 0;
        }
        type = next;
    }
    if (buf_remaining(&r) != 0)
        return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, 0,
                            "%zu bytes after the last payload", buf_remaining(&r));
    return 0;
}

const ike_payload *ike_chain_find(const ike_chain *c, uint8_t type, const ike_payload *after)
{
    size_t i = after ? (size_t)(after - c->pl) + 1 : 0;
    for (; i < c->n; i++)
        if (c->pl[i].type == type)
            return &c->pl[i];
    return NULL;
}

size_t ike_chain_count(const ike_chain *c, uint8_t type)
{
    size_t n = 0;
    for (size_t i = 0; i < c->n; i++)
        n += c->pl[i].type == type;
    return n;
}

int ike_message_parse(buf_reader msg, ike_message *ret, ike_diag *diag)
{
    int rc = ike_header_parse(&msg, &ret->hdr, diag);
    if (rc < 0)
        return rc;
    ret->raw = msg;
    buf_reader body = buf_reader_make(msg.p + IKE_HEADER_LEN, msg.len - IKE_HEADER_LEN);
    return ike_chain_parse(body, ret->hdr.next_payload, IKE_HEADER_LEN, &ret->chain, diag);
}

/* ---------------------------------------------------------- chain writer */

static void patch_u8(buf_writer *w, size_t at, uint8_t v)
{
    if (!buf_writer_ok(w))
        return;
    if (at >= buf_writer_len(w)) {
        w->err = true;
        return;
    }
    w->p[at] = v;
}

void ike_chain_writer_init(ike_chain_writer *cw, buf_writer *w, size_t next_field_at)
{
    cw->w = w;
    cw->hdr_at = SIZE_MAX;
    cw->next_field_at = next_field_at;
    cw->open_at = SIZE_MAX;
    cw->first_type = IKE_PL_NONE;
    cw->count = 0;
}

void ike_payload_end(ike_chain_writer *cw)
{
    if (cw->open_at == SIZE_MAX)
        return;
    size_t len = buf_writer_len(cw->w) - cw->open_at;
    if (len > UINT16_MAX)
        cw->w->err = true;
    else
        buf_patch_u16(cw->w, cw->open_at + 2, (uint16_t)len);
    cw->open_at = SIZE_MAX;
}

void ike_payload_begin(ike_chain_writer *cw, uint8_t type, bool critical)
{
    ike_payload_end(cw);
    if (!buf_writer_ok(cw->w))
        return;
    if (cw->next_field_at != SIZE_MAX)
        patch_u8(cw->w, cw->next_field_at, type);
    if (cw->count == 0)
        cw->first_type = type;
    size_t at = buf_writer_len(cw->w);
    buf_put_u8(cw->w, IKE_PL_NONE);
    buf_put_u8(cw->w, critical ? 0x80 : 0);
    buf_put_u16(cw->w, 0);
    cw->next_field_at = at;
    cw->open_at = at;
    cw->count++;
}

void ike_chain_writer_finish(ike_chain_writer *cw)
{
    ike_payload_end(cw);
}

void ike_build_raw(ike_chain_writer *cw, uint8_t type, bool critical, const void *body, size_t len)
{
    ike_payload_begin(cw, type, critical);
    buf_put_bytes(cw->w, body, len);
    ike_payload_end(cw);
}

void ike_message_begin(buf_writer *w, const ike_header *hdr, ike_chain_writer *cw)
{
    size_t at = buf_writer_len(w);
    ike_header h = *hdr;
    h.next_payload = IKE_PL_NONE;   /* set by the first payload */
    h.length = 0;                   /* set by ike_message_end() */
    ike_header_build(w, &h);
    ike_chain_writer_init(cw, w, at + IKE_HDR_NEXT_PAYLOAD_AT);
    cw->hdr_at = at;
}

int ike_message_end(ike_chain_writer *cw)
{
    ike_chain_writer_finish(cw);
    if (cw->hdr_at == SIZE_MAX)
        cw->w->err = true;
    else
        ike_message_finish(cw->w, cw->hdr_at);
    return buf_writer_ok(cw->w) ? 0 : M2MVPN_E_INVAL;
}
