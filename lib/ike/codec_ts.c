/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Traffic selectors (RFC 7296 §3.13) with prefix <-> range helpers, and the
 * Configuration payload (RFC 7296 §3.15) that carries the virtual IP and DNS.
 */
#include "ike/codec.h"

#include <string.h>

#include <m2mvpn/m2mvpn.h>

#define TS_LEN_V4 16
#define TS_LEN_V6 40
#define TS_MIN_LEN 8        /* type, protocol, length, ports */

/* ------------------------------------------------------------------ TS */

int ike_ts_parse(buf_reader body, ike_ts_list *ret, ike_diag *diag)
{
    uint8_t count;
    ret->n = 0;
    ret->n_skipped = 0;
    if (!buf_get_u8(&body, &count) || !buf_skip(&body, 3))
        return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, IKE_PL_TSI,
                            "TS: %zu bytes, need at least 4", body.len);
    if (count == 0)
        return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, IKE_PL_TSI,
                            "TS: no traffic selectors");
    for (unsigned i = 0; i < count; i++) {
        uint8_t type, proto;
        uint16_t len;
        buf_reader sel;
        buf_reader c = body;
        if (!buf_get_u8(&c, &type) || !buf_get_u8(&c, &proto) || !buf_get_u16(&c, &len))
            return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, IKE_PL_TSI,
                                "TS %u of %u: truncated selector", i + 1, count);
        if (len < TS_MIN_LEN || len > body.len)
            return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, IKE_PL_TSI,
                                "TS %u of %u: selector length %u invalid (%zu left)",
                                i + 1, count, len, body.len);
        buf_get_view(&body, len, &sel);
        buf_skip(&sel, 4);
        if (type != IKE_TS_IPV4_ADDR_RANGE && type != IKE_TS_IPV6_ADDR_RANGE) {
            ret->n_skipped++;
            continue;
        }
        size_t alen = type == IKE_TS_IPV6_ADDR_RANGE ? 16 : 4;
        if (len != (type == IKE_TS_IPV6_ADDR_RANGE ? TS_LEN_V6 : TS_LEN_V4))
            return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, IKE_PL_TSI,
                                "TS %u (%s): selector length %u, must be %d", i + 1,
                                ike_ts_type_name(type), len,
                                type == IKE_TS_IPV6_ADDR_RANGE ? TS_LEN_V6 : TS_LEN_V4);
        if (ret->n == IKE_MAX_TS)
            return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, IKE_PL_TSI,
                                "TS: more than %d selectors", IKE_MAX_TS);
        ike_ts *ts = &ret->ts[ret->n];
        memset(ts, 0, sizeof(*ts));
        ts->type = type;
        ts->ip_proto = proto;
        buf_get_u16(&sel, &ts->port_start);
        buf_get_u16(&sel, &ts->port_end);
        buf_get_bytes(&sel, ts->addr_start, alen);
        buf_get_bytes(&sel, ts->addr_end, alen);
        /* Ports with start > end are legal: 65535..0 means OPAQUE (§3.13.1). */
        if (memcmp(ts->addr_start, ts->addr_end, alen) > 0)
            return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, IKE_PL_TSI,
                                "TS %u: start address above end address", i + 1);
        ret->n++;
    }
    if (buf_remaining(&body))
        return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, IKE_PL_TSI,
                            "TS: %zu bytes after %u selectors", buf_remaining(&body), count);
    return 0;
}

void ike_build_ts(ike_chain_writer *cw, uint8_t pl_type, const ike_ts *ts, size_t n)
{
    if ((pl_type != IKE_PL_TSI && pl_type != IKE_PL_TSR) || n == 0 || n > 255) {
        cw->w->err = true;
        return;
    }
    ike_payload_begin(cw, pl_type, false);
    buf_put_u8(cw->w, (uint8_t)n);
    buf_put_zeros(cw->w, 3);
    for (size_t i = 0; i < n; i++) {
        bool v6 = ts[i].type == IKE_TS_IPV6_ADDR_RANGE;
        if (!v6 && ts[i].type != IKE_TS_IPV4_ADDR_RANGE) {
            cw->w->err = true;
            return;
        }
        size_t alen = v6 ? 16 : 4;
        buf_put_u8(cw->w, ts[i].type);
        buf_put_u8(cw->w, ts[i].ip_proto);
        buf_put_u16(cw->w, v6 ? TS_LEN_V6 : TS_LEN_V4);
        buf_put_u16(cw->w, ts[i].port_start);
        buf_put_u16(cw->w, ts[i].port_end);
        buf_put_bytes(cw->w, ts[i].addr_start, alen);
        buf_put_bytes(cw->w, ts[i].addr_end, alen);
    }
    ike_payload_end(cw);
}

int ike_ts_from_prefix(const uint8_t *addr, size_t family_len, unsigned prefix_len,
                       uint8_t ip_proto, uint16_t port_start, uint16_t port_end, ike_ts *ret)
{
    if ((family_len != 4 && family_len != 16) || prefix_len > family_len * 8 || !addr)
        return M2MVPN_E_INVAL;
    ike_ts ts;
    memset(&ts, 0, sizeof(ts));
    ts.type = family_len == 16 ? IKE_TS_IPV6_ADDR_RANGE : IKE_TS_IPV4_ADDR_RANGE;
    ts.ip_proto = ip_proto;
    ts.port_start = port_start;
    ts.port_end = port_end;
    for (size_t i = 0; i < family_len; i++) {
        unsigned bits = prefix_len > i * 8 ? prefix_len - (unsigned)i * 8 : 0;
        uint8_t mask = bits >= 8 ? 0xff : (uint8_t)(0xff << (8 - bits));
        ts.addr_start[i] = addr[i] & mask;
        ts.addr_end[i] = (uint8_t)(addr[i] | (uint8_t)~mask);
    }
    *ret = ts;
    return 0;
}

int ike_ts_to_prefix(const ike_ts *ts, uint8_t addr[16], unsigned *prefix_len)
{
    if (ts->type != IKE_TS_IPV4_ADDR_RANGE && ts->type != IKE_TS_IPV6_ADDR_RANGE)
        return M2MVPN_E_INVAL;
    size_t nbits = ike_ts_addr_len(ts) * 8;
    size_t bit = 0;
    /* Leading bits equal in start and end form the prefix ... */
    for (; bit < nbits; bit++) {
        unsigned s = (ts->addr_start[bit / 8] >> (7 - bit % 8)) & 1;
        unsigned e = (ts->addr_end[bit / 8] >> (7 - bit % 8)) & 1;
        if (s != e)
            break;
    }
    /* ... and the rest must run from all zeros to all ones. */
    for (size_t b = bit; b < nbits; b++) {
        unsigned s = (ts->addr_start[b / 8] >> (7 - b % 8)) & 1;
        unsigned e = (ts->addr_end[b / 8] >> (7 - b % 8)) & 1;
        if (s != 0 || e != 1)
            return M2MVPN_E_INVAL;
    }
    memset(addr, 0, 16);
    memcpy(addr, ts->addr_start, ike_ts_addr_len(ts));
    *prefix_len = (unsigned)bit;
    return 0;
}

/* ------------------------------------------------------------------ CP */

/* Allowed non-empty value size of a known attribute; 0 = any size;
 * -1 = a multiple of 2 (SUPPORTED_ATTRIBUTES). */
static int cp_value_size(uint16_t type)
{
    switch (type) {
    case IKE_CP_INTERNAL_IP4_ADDRESS:
    case IKE_CP_INTERNAL_IP4_NETMASK:
    case IKE_CP_INTERNAL_IP4_DNS:
    case IKE_CP_INTERNAL_IP4_NBNS:
    case IKE_CP_INTERNAL_IP4_DHCP:
        return 4;
    case IKE_CP_INTERNAL_IP6_ADDRESS:
    case IKE_CP_INTERNAL_IP6_SUBNET:
        return 17;      /* address + prefix length */
    case IKE_CP_INTERNAL_IP6_DNS:
    case IKE_CP_INTERNAL_IP6_DHCP:
        return 16;
    case IKE_CP_INTERNAL_IP4_SUBNET:
        return 8;       /* address + netmask */
    case IKE_CP_SUPPORTED_ATTRIBUTES:
        return -1;
    default:
        return 0;
    }
}

int ike_cp_parse(buf_reader body, ike_cp *ret, ike_diag *diag)
{
    uint8_t cfg;
    ret->n = 0;
    if (!buf_get_u8(&body, &cfg) || !buf_skip(&body, 3))
        return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, IKE_PL_CP,
                            "CP: %zu bytes, need at least 4", body.len);
    ret->cfg_type = cfg;
    while (buf_remaining(&body)) {
        uint16_t type;
        buf_reader value;
        buf_reader c = body;
        if (!buf_get_u16(&c, &type) || !buf_get_u16_length_prefixed(&c, &value))
            return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, IKE_PL_CP,
                                "CP: attribute %zu truncated or longer than the payload",
                                ret->n + 1);
        type &= 0x7fff;     /* the top bit is reserved */
        int size = cp_value_size(type);
        if (value.len && ((size > 0 && value.len != (size_t)size) ||
                          (size < 0 && value.len % 2)))
            return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, IKE_PL_CP,
                                "CP: attribute %u (%s) has %zu bytes", type,
                                ike_cp_attr_name(type), value.len);
        if (ret->n == IKE_MAX_CP_ATTRS)
            return ike_diag_set(diag, M2MVPN_E_PROTOCOL, IKE_N_INVALID_SYNTAX, IKE_PL_CP,
                                "CP: more than %d attributes", IKE_MAX_CP_ATTRS);
        ret->attr[ret->n].type = type;
        ret->attr[ret->n].value = value;
        ret->n++;
        body = c;
    }
    return 0;
}

void ike_build_cp(ike_chain_writer *cw, uint8_t cfg_type, const ike_cp_attr *attrs, size_t n)
{
    ike_payload_begin(cw, IKE_PL_CP, false);
    buf_put_u8(cw->w, cfg_type);
    buf_put_zeros(cw->w, 3);
    for (size_t i = 0; i < n; i++) {
        if (attrs[i].type > 0x7fff || attrs[i].value.len > UINT16_MAX) {
            cw->w->err = true;
            return;
        }
        buf_put_u16(cw->w, attrs[i].type);
        buf_put_u16(cw->w, (uint16_t)attrs[i].value.len);
        buf_put_bytes(cw->w, attrs[i].value.p, attrs[i].value.len);
    }
    ike_payload_end(cw);
}

const ike_cp_attr *ike_cp_find(const ike_cp *cp, uint16_t type, const ike_cp_attr *after)
{
    size_t i = after ? (size_t)(after - cp->attr) + 1 : 0;
    for (; i < cp->n; i++)
        if (cp->attr[i].type == type)
            return &cp->attr[i];
    return NULL;
}
