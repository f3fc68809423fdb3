/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TSO segmentation and TCP coalescing for the TUN offloads (see esp_offload.h).
 * Packets come from the local kernel (TUN reads) or were authenticated by
 * ESP (coalescing), but every length is still checked before use, and the
 * checksums of what is coalesced are verified (ESP proves who sent it, not
 * that the inner packet arrived at the gateway intact).
 */
#include <string.h>

#include "../core/buf.h"
#include "esp_offload.h"

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_URG 0x20
#define TCP_ECE 0x40
#define TCP_CWR 0x80

uint32_t esp_csum_add(uint32_t sum, const uint8_t *p, size_t len)
{
    /* RFC 1071 §2(B): the one's complement sum does not depend on byte
     * order, so sum native-order words (both 32-bit halves of each 64-bit
     * load into a 64-bit accumulator: no overflow below 2^31 loads) and
     * swap the folded 16 bits at the end. Every word starts at an even
     * offset from p, as the big-endian 16-bit words of the checksum do.
     * About 3x the big-endian byte assembly: this runs once per received
     * TCP segment (esp_gro) and per segment sent (TSO). */
    uint64_t s = 0;
    while (len >= 32) {
        uint64_t w[4];
        memcpy(w, p, sizeof(w));
        s += (w[0] & 0xffffffffu) + (w[0] >> 32) + (w[1] & 0xffffffffu) + (w[1] >> 32) +
             (w[2] & 0xffffffffu) + (w[2] >> 32) + (w[3] & 0xffffffffu) + (w[3] >> 32);
        p += 32;
        len -= 32;
    }
    while (len >= 4) {
        uint32_t w;
        memcpy(&w, p, sizeof(w));
        s += w;
        p += 4;
        len -= 4;
    }
    if (len >= 2) {
        uint16_t w;
        memcpy(&w, p, sizeof(w));
        s += w;
        p += 2;
        len -= 2;
    }
    if (len) {
        uint8_t last[2] = { p[0], 0 }; /* padded with a zero byte */
        uint16_t w;
        memcpy(&w, last, sizeof(w));
        s += w;
    }
    while (s >> 16)
        s = (s & 0xffffu) + (s >> 16);
    uint16_t folded = (uint16_t)s;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    folded = (uint16_t)(folded << 8 | folded >> 8);
#endif
    uint64_t total = (uint64_t)sum + folded;
    return (uint32_t)((total & 0xffffffffu) + (total >> 32));
}

uint16_t esp_csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffffu) + (sum >> 16);
    return (uint16_t)sum;
}

bool esp_csum_complete(uint8_t *pkt, size_t len, uint16_t csum_start, uint16_t csum_offset)
{
    if ((size_t)csum_start + csum_offset + 2 > len)
        return false;
    /* The field holds the pseudo-header sum; the rest is summed over it. */
    uint16_t c = (uint16_t)~esp_csum_fold(esp_csum_add(0, pkt + csum_start, len - csum_start));
    buf_store_be16(pkt + csum_start + csum_offset, c);
    return true;
}

/* IP/TCP header lengths, or false if not a TCP packet we handle. */
static bool tcp_headers(const uint8_t *pkt, size_t len, bool *ipv6, size_t *ip_len,
                        size_t *hdr_len)
{
    if (len < 20)
        return false;
    if ((pkt[0] >> 4) == 4) {
        size_t ihl = (pkt[0] & 15u) * 4u;
        if (ihl < 20 || len < ihl + 20 || pkt[9] != 6)
            return false;
        if (buf_load_be16(pkt + 6) & 0x3fff) /* fragment */
            return false;
        *ipv6 = false;
        *ip_len = ihl;
    } else if ((pkt[0] >> 4) == 6) {
        if (len < 60 || pkt[6] != 6)
            return false;
        *ipv6 = true;
        *ip_len = 40;
    } else {
        return false;
    }
    size_t thl = (pkt[*ip_len + 12] >> 4) * 4u;
    if (thl < 20 || len < *ip_len + thl)
        return false;
    *hdr_len = *ip_len + thl;
    return true;
}

static uint32_t pseudo_sum(const uint8_t *ip, bool ipv6, size_t tcp_len)
{
    uint32_t s = ipv6 ? esp_csum_add(0, ip + 8, 32) : esp_csum_add(0, ip + 12, 8);
    return s + 6u + (uint32_t)tcp_len;
}

static void fix_headers(uint8_t *p, bool ipv6, size_t ip_len, size_t hdr_len, size_t seg_len)
{
    size_t total = hdr_len + seg_len;
    if (ipv6) {
        buf_store_be16(p + 4, (uint16_t)(total - 40));
    } else {
        buf_store_be16(p + 2, (uint16_t)total);
        buf_store_be16(p + 10, 0);
        buf_store_be16(p + 10, (uint16_t)~esp_csum_fold(esp_csum_add(0, p, ip_len)));
    }
    uint8_t *tcp = p + ip_len;
    buf_store_be16(tcp + 16, 0);
    uint32_t s = pseudo_sum(p, ipv6, total - ip_len);
    s = esp_csum_add(s, tcp, total - ip_len);
    buf_store_be16(tcp + 16, (uint16_t)~esp_csum_fold(s));
}

size_t esp_tso_segment_part(const uint8_t *pkt, size_t len, uint16_t mss, size_t first,
                            uint8_t *const *out, size_t out_cap, size_t *out_len, size_t max_out,
                            size_t *total)
{
    bool ipv6;
    size_t ip_len, hdr_len;
    *total = 0;
    if (mss == 0 || !tcp_headers(pkt, len, &ipv6, &ip_len, &hdr_len))
        return 0;
    size_t payload = len - hdr_len;
    size_t n = payload == 0 ? 1 : (payload + mss - 1) / mss;
    if (hdr_len + (payload < mss ? payload : mss) > out_cap)
        return 0;
    *total = n;
    if (first >= n)
        return 0;
    size_t end = n - first > max_out ? first + max_out : n;
    uint32_t seq = buf_load_be32(pkt + ip_len + 4);
    uint16_t id = ipv6 ? 0 : buf_load_be16(pkt + 4);
    uint8_t flags = pkt[ip_len + 13];
    for (size_t i = first; i < end; i++) {
        size_t off = i * mss;
        size_t seg = payload - off < mss ? payload - off : mss;
        uint8_t *p = out[i - first];
        memcpy(p, pkt, hdr_len);
        memcpy(p + hdr_len, pkt + hdr_len + off, seg);
        if (!ipv6)
            buf_store_be16(p + 4, (uint16_t)(id + i));
        buf_store_be32(p + ip_len + 4, seq + (uint32_t)off);
        uint8_t f = flags;
        if (i + 1 < n)
            f &= (uint8_t)~(TCP_FIN | TCP_PSH);
        if (i > 0)
            f &= (uint8_t)~TCP_CWR;
        p[ip_len + 13] = f;
        fix_headers(p, ipv6, ip_len, hdr_len, seg);
        out_len[i - first] = hdr_len + seg;
    }
    return end - first;
}

size_t esp_tso_segment(const uint8_t *pkt, size_t len, uint16_t mss, uint8_t *const *out,
                       size_t out_cap, size_t *out_len, size_t max_out)
{
    size_t total;
    if (!esp_tso_segment_part(pkt, len, mss, 0, out, out_cap, out_len, max_out, &total) ||
        total > max_out)
        return 0;
    return total;
}

/* ------------------------------------------------------------- coalescing */

/* The segment's own checksums: IPv4 header, and TCP over the pseudo-header.
 * One pass over the segment; it replaces the kernel's pass, which a merged
 * (or DATA_VALID) packet does not get. */
static bool segment_csum_ok(const uint8_t *pkt, size_t len, bool ipv6, size_t ip_len)
{
    if (!ipv6 && esp_csum_fold(esp_csum_add(0, pkt, ip_len)) != 0xffff)
        return false;
    uint32_t s = esp_csum_add(pseudo_sum(pkt, ipv6, len - ip_len), pkt + ip_len, len - ip_len);
    return esp_csum_fold(s) == 0xffff;
}

void esp_gro_start(esp_gro *g, const uint8_t *pkt, size_t len)
{
    uint8_t *p = g->buf + ESP_VNET_HDR_LEN;
    size_t ip_len;
    memcpy(p, pkt, len);
    g->len = len;
    g->count = 1;
    g->closed = true;
    g->csum_ok = false;
    if (!tcp_headers(pkt, len, &g->ipv6, &ip_len, &g->hdr_len))
        return;
    if (!(g->csum_ok = segment_csum_ok(pkt, len, g->ipv6, ip_len)))
        return; /* goes up alone, for the kernel to check */
    uint8_t flags = pkt[ip_len + 13];
    g->mss = len - g->hdr_len;
    g->next_seq = buf_load_be32(pkt + ip_len + 4) + (uint32_t)g->mss;
    /* Only plain data segments (ACK, maybe ECE) start a run. */
    g->closed = g->mss == 0 || (flags & ~(TCP_ACK | TCP_ECE)) != 0 ||
                (!g->ipv6 && (pkt[1] & 3) == 3); /* ECN CE: do not merge */
}

bool esp_gro_append(esp_gro *g, const uint8_t *pkt, size_t len)
{
    if (g->len == 0 || g->closed)
        return false;
    const uint8_t *head = g->buf + ESP_VNET_HDR_LEN;
    bool ipv6;
    size_t ip_len, hdr_len;
    if (!tcp_headers(pkt, len, &ipv6, &ip_len, &hdr_len) || ipv6 != g->ipv6 ||
        hdr_len != g->hdr_len)
        return false;
    size_t seg = len - hdr_len;
    /* The merged IPv4 packet's total length must fit its 16-bit field. */
    if (seg == 0 || seg > g->mss || g->len + seg > (ipv6 ? ESP_GSO_MAX : 65535))
        return false;
    /* Same addresses, ports, ack, window and options; next sequence number. */
    if (ipv6) {
        if (memcmp(pkt + 8, head + 8, 32) != 0 || (pkt[0] != head[0]) || (pkt[1] != head[1]))
            return false;
    } else {
        if (memcmp(pkt + 12, head + 12, 8) != 0 || pkt[1] != head[1] || pkt[8] != head[8] ||
            ip_len != 20)
            return false;
    }
    const uint8_t *t = pkt + ip_len, *ht = head + ip_len;
    if (memcmp(t, ht, 4) != 0 || buf_load_be32(t + 4) != g->next_seq ||
        memcmp(t + 8, ht + 8, 4) != 0 || memcmp(t + 14, ht + 14, 2) != 0 ||
        memcmp(t + 20, ht + 20, hdr_len - ip_len - 20) != 0)
        return false;
    uint8_t flags = t[13];
    if ((flags & ~(TCP_ACK | TCP_ECE | TCP_PSH)) != 0 || flags != (ht[13] | (flags & TCP_PSH)))
        return false;
    if (!segment_csum_ok(pkt, len, ipv6, ip_len))
        return false;
    memcpy(g->buf + ESP_VNET_HDR_LEN + g->len, pkt + hdr_len, seg);
    g->len += seg;
    g->count++;
    g->next_seq += (uint32_t)seg;
    if (flags & TCP_PSH) {
        g->buf[ESP_VNET_HDR_LEN + ip_len + 13] |= TCP_PSH;
        g->closed = true;
    }
    if (seg < g->mss)
        g->closed = true;
    return true;
}

size_t esp_gro_finish(esp_gro *g)
{
    struct virtio_net_hdr vh;
    memset(&vh, 0, sizeof(vh));
    uint8_t *p = g->buf + ESP_VNET_HDR_LEN;
    size_t len = g->len;
    if (g->count > 1) {
        size_t ip_len = g->ipv6 ? 40 : (p[0] & 15u) * 4u;
        if (g->ipv6) {
            buf_store_be16(p + 4, (uint16_t)(len - 40));
        } else {
            buf_store_be16(p + 2, (uint16_t)len);
            buf_store_be16(p + 10, 0);
            buf_store_be16(p + 10, (uint16_t)~esp_csum_fold(esp_csum_add(0, p, ip_len)));
        }
        /* Partial checksum: the kernel treats it as verified on receive. */
        buf_store_be16(p + ip_len + 16,
                       esp_csum_fold(pseudo_sum(p, g->ipv6, len - ip_len)));
        vh.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        vh.gso_type = g->ipv6 ? VIRTIO_NET_HDR_GSO_TCPV6 : VIRTIO_NET_HDR_GSO_TCPV4;
        vh.gso_size = (uint16_t)g->mss;
        vh.hdr_len = (uint16_t)g->hdr_len;
        vh.csum_start = (uint16_t)ip_len;
        vh.csum_offset = 16;
    } else if (g->csum_ok) {
        /* Verified in esp_gro_start: the kernel need not look again. */
        vh.flags = VIRTIO_NET_HDR_F_DATA_VALID;
    } /* else: not TCP, or a wrong checksum: the kernel checks (and drops) */
    memcpy(g->buf, &vh, sizeof(vh));
    g->len = 0;
    g->count = 0;
    return len + ESP_VNET_HDR_LEN;
}
