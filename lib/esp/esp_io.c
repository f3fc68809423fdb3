/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The worker side of the datapath: TUN -> encrypt -> UDP and UDP -> decrypt
 * -> TUN, each on its own thread with its own preallocated batch buffers,
 * batched socket I/O (recvmmsg/sendmmsg, UDP GSO/GRO) and, with offloads,
 * TSO segmentation and TCP coalescing on the TUN. Workers only read the SA
 * table (rwlock, once per batch) and hand IKE packets and rekey requests to
 * the engine through a queue and an eventfd.
 */
#include <errno.h>
#include <netinet/udp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <m2mvpn/m2mvpn.h>

#include "../core/buf.h"
#include "esp_datapath_int.h"

/* -------------------------------------------------------- TUN -> UDP */

static uint8_t next_header_of(const uint8_t *pkt, size_t len)
{
    if (len < 20)
        return 0;
    switch (pkt[0] >> 4) {
    case 4: return ESP_NH_IPV4;
    case 6: return len >= 40 ? ESP_NH_IPV6 : 0;
    default: return 0;
    }
}

static bool prefix_contains(const esp_prefix *p, const uint8_t *addr)
{
    size_t full = p->prefix_len / 8u, rest = p->prefix_len % 8u;
    if (memcmp(p->addr, addr, full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff00u >> rest);
    return (p->addr[full] & mask) == (addr[full] & mask);
}

static bool in_prefixes(const esp_prefix *p, size_t n, int family, const uint8_t *addr)
{
    for (size_t i = 0; i < n; i++)
        if (p[i].family == family && prefix_contains(&p[i], addr))
            return true;
    return false;
}

/* Inbound (RFC 4301 §5.2): a decrypted packet must come from the negotiated
 * remote selectors and go to us (virtual IP / TSi), so that a gateway can
 * neither inject packets from anywhere nor have us forward its packets to
 * other hosts. An empty list checks nothing (no selectors configured). */
static bool inbound_allowed_locked(const esp_datapath *dp, const uint8_t *pkt, uint8_t nh)
{
    int family = nh == ESP_NH_IPV4 ? AF_INET : AF_INET6;
    const uint8_t *src = nh == ESP_NH_IPV4 ? pkt + 12 : pkt + 8;
    const uint8_t *dst = nh == ESP_NH_IPV4 ? pkt + 16 : pkt + 24;
    return (dp->n_in_src == 0 || in_prefixes(dp->in_src, dp->n_in_src, family, src)) &&
           (dp->n_in_dst == 0 || in_prefixes(dp->in_dst, dp->n_in_dst, family, dst));
}

/* Only what the remote selectors as negotiated cover (in_src: TSr as the
 * gateway granted it, or remote_ts without a negotiation) goes into the SA;
 * the rest has no SA and is dropped here: a part of the profile's prefixes
 * or a whole address family the gateway did not grant (IPv6 around an
 * IPv4-only tunnel), IPv6 link-local chatter on the TUN. No selectors: all. */
static bool covered_by_ts_locked(const esp_datapath *dp, const uint8_t *pkt, uint8_t nh)
{
    if (dp->n_in_src == 0)
        return true;
    int family = nh == ESP_NH_IPV4 ? AF_INET : AF_INET6;
    const uint8_t *dst = nh == ESP_NH_IPV4 ? pkt + 16 : pkt + 24;
    for (size_t i = 0; i < dp->n_in_src; i++)
        if (dp->in_src[i].family == family && prefix_contains(&dp->in_src[i], dst))
            return true;
    return false;
}

/* On-demand, no SA yet: keep up to ESP_HOLD_MAX packets that a remote
 * selector covers and tell the engine once (traffic_wanted). Caller holds
 * the read lock; only the TX side writes the held slots. Returns how many
 * of the n were kept. */
static int hold_packets(esp_datapath *dp, int n)
{
    esp_tx_batch *b = dp->tx;
    int kept = 0;
    for (int i = 0; i < n && dp->n_held < ESP_HOLD_MAX; i++) {
        uint8_t *inner = b->buf[i] + ESP_HEADROOM;
        uint8_t nh = next_header_of(inner, b->inner_len[i]);
        if (!nh || !covered_by_ts_locked(dp, inner, nh))
            continue;
        if (!dp->held[dp->n_held] && !(dp->held[dp->n_held] = malloc(ESP_TX_SLOT)))
            break; /* out of memory: dropped (counted no SA) */
        memcpy(dp->held[dp->n_held] + ESP_HEADROOM, inner, b->inner_len[i]);
        dp->held_len[dp->n_held++] = b->inner_len[i];
        kept++;
    }
    if (kept && !dp->hold_reported) {
        dp->hold_reported = true;
        atomic_store(&dp->traffic_wanted, true);
        esp_dp_signal_engine(dp);
    }
    return kept;
}

/* RFC 1624 incremental update of a ones'-complement checksum (big-endian
 * at sum) for n bytes changed from `from` to `to` (n even). */
static void csum_update(uint8_t *sum, const uint8_t *from, const uint8_t *to, size_t n)
{
    uint32_t s = (uint16_t)~((sum[0] << 8) | sum[1]);
    for (size_t i = 0; i < n; i += 2) {
        s += (uint16_t)~((from[i] << 8) | from[i + 1]);
        s += (uint32_t)((to[i] << 8) | to[i + 1]);
    }
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    s = (uint16_t)~s;
    sum[0] = (uint8_t)(s >> 8);
    sum[1] = (uint8_t)s;
}

/* A held IPv4 packet left before the virtual IP existed, so its source is
 * whatever the kernel picked then: it gets the virtual IP (the gateway
 * accepts nothing else), with the IP and TCP/UDP checksums updated. */
static void set_source(uint8_t *pkt, size_t len, const uint8_t vip[4])
{
    size_t ihl = (size_t)(pkt[0] & 0x0f) * 4;
    if (len < 20 || ihl < 20 || ihl > len || memcmp(pkt + 12, vip, 4) == 0)
        return;
    uint8_t old[4];
    memcpy(old, pkt + 12, 4);
    memcpy(pkt + 12, vip, 4);
    csum_update(pkt + 10, old, vip, 4);
    bool first_fragment = ((pkt[6] & 0x1f) | pkt[7]) == 0;
    uint8_t proto = pkt[9];
    if (!first_fragment)
        return;
    if (proto == 6 && len >= ihl + 18)
        csum_update(pkt + ihl + 16, old, vip, 4);
    else if (proto == 17 && len >= ihl + 8 && (pkt[ihl + 6] | pkt[ihl + 7])) {
        csum_update(pkt + ihl + 6, old, vip, 4);
        if (!(pkt[ihl + 6] | pkt[ihl + 7]))
            pkt[ihl + 6] = pkt[ihl + 7] = 0xff; /* 0 means "no checksum" in UDP */
    }
}

void esp_dp_clear_held_locked(esp_datapath *dp)
{
    for (size_t i = 0; i < ESP_HOLD_MAX; i++) {
        free(dp->held[i]);
        dp->held[i] = NULL;
    }
    dp->n_held = 0;
}

void esp_dp_send_held(esp_datapath *dp, const esp_prefix *vip)
{
    pthread_rwlock_wrlock(&dp->sa_lock);
    esp_slot *slot = dp->out_idx >= 0 ? &dp->slots[dp->out_idx] : NULL;
    for (size_t i = 0; slot && i < dp->n_held; i++) {
        uint8_t *inner = dp->held[i] + ESP_HEADROOM;
        uint8_t nh = next_header_of(inner, dp->held_len[i]);
        if (nh == ESP_NH_IPV4 && vip && vip->family == AF_INET)
            set_source(inner, dp->held_len[i], vip->addr);
        size_t hdr = esp_sa_header_len(slot->sa);
        uint8_t *pkt = inner - hdr;
        size_t pkt_len;
        esp_drop_reason why;
        if (esp_sa_encap(slot->sa, inner, dp->held_len[i], nh, pkt,
                         ESP_TX_SLOT - (size_t)(pkt - dp->held[i]), &pkt_len, &why) < 0)
            continue; /* counted by the SA */
        if (sendto(dp->udp_fd, pkt, pkt_len, 0, (struct sockaddr *)&slot->peer, slot->peer_len) > 0)
            atomic_fetch_add_explicit(&dp->tx_packets, 1, memory_order_relaxed);
    }
    if (slot) {
        esp_dp_clear_held_locked(dp);
        dp->hold_reported = false; /* without SA again later: reported again */
    }
    pthread_rwlock_unlock(&dp->sa_lock);
}

/* One message per packet, or with UDP GSO one per run of equal-sized packets
 * (the last of a run may be shorter), at most 64 segments / 64 KiB each. */
static int build_messages(esp_datapath *dp, int out, struct sockaddr_storage *peer,
                          socklen_t peer_len)
{
    esp_tx_batch *b = dp->tx;
    int m = 0;
    for (int i = 0; i < out; m++) {
        size_t seg = b->iov[i].iov_len, total = seg;
        int k = 1;
        if (dp->udp_gso) {
            while (i + k < out && k < 64 && b->iov[i + k].iov_len <= seg &&
                   total + b->iov[i + k].iov_len <= 65000) {
                total += b->iov[i + k].iov_len;
                k++;
                if (b->iov[i + k - 1].iov_len < seg)
                    break;
            }
        }
        struct msghdr *mh = &b->msg[m].msg_hdr;
        memset(mh, 0, sizeof(*mh));
        mh->msg_iov = &b->iov[i];
        mh->msg_iovlen = (size_t)k;
        mh->msg_name = peer;
        mh->msg_namelen = peer_len;
        if (k > 1) {
            mh->msg_control = b->ctrl[m].buf;
            mh->msg_controllen = sizeof(b->ctrl[m].buf);
            struct cmsghdr *cm = CMSG_FIRSTHDR(mh);
            cm->cmsg_level = SOL_UDP;
            cm->cmsg_type = UDP_SEGMENT;
            cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t gso_size = (uint16_t)seg;
            memcpy(CMSG_DATA(cm), &gso_size, sizeof(gso_size));
        }
        i += k;
    }
    return m;
}

/* Encrypt the n plaintext packets gathered in the slots and send them. */
static void tx_flush(esp_datapath *dp, int n)
{
    esp_tx_batch *b = dp->tx;
    struct sockaddr_storage peer;
    socklen_t peer_len = 0;
    int out = 0;
    if (n == 0)
        return;
    pthread_rwlock_rdlock(&dp->sa_lock);
    esp_slot *slot = dp->out_idx >= 0 ? &dp->slots[dp->out_idx] : NULL;
    if (!slot) {
        /* Kill switch: no SA, nothing leaves; on-demand, the first few
         * packets for a protected network wait for the SA. */
        int held = dp->hold ? hold_packets(dp, n) : 0;
        atomic_fetch_add_explicit(&dp->drop_no_sa, (uint64_t)(n - held), memory_order_relaxed);
    } else {
        peer = slot->peer;
        peer_len = slot->peer_len;
        size_t hdr = esp_sa_header_len(slot->sa);
        for (int i = 0; i < n; i++) {
            uint8_t *inner = b->buf[i] + ESP_HEADROOM;
            uint8_t nh = next_header_of(inner, b->inner_len[i]);
            if (!nh) {
                atomic_fetch_add_explicit(&dp->drop_malformed, 1, memory_order_relaxed);
                continue;
            }
            if (!covered_by_ts_locked(dp, inner, nh)) {
                atomic_fetch_add_explicit(&dp->drop_no_sa, 1, memory_order_relaxed);
                continue;
            }
            uint8_t *pkt = inner - hdr;
            size_t pkt_len;
            esp_drop_reason why;
            if (esp_sa_encap(slot->sa, inner, b->inner_len[i], nh, pkt,
                             ESP_TX_SLOT - (size_t)(pkt - b->buf[i]), &pkt_len, &why) < 0)
                continue; /* counted by the SA */
            b->iov[out].iov_base = pkt;
            b->iov[out].iov_len = pkt_len;
            out++;
        }
        if (esp_sa_rekey_pending(slot->sa))
            esp_dp_signal_engine(dp);
    }
    pthread_rwlock_unlock(&dp->sa_lock);

    int n_msg = build_messages(dp, out, &peer, peer_len);
    int sent = 0;
    while (sent < n_msg) {
        int r = sendmmsg(dp->udp_fd, b->msg + sent, (unsigned)(n_msg - sent), 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (dp->udp_gso && (errno == EIO || errno == EINVAL || errno == ENOPROTOOPT)) {
                /* No UDP GSO here (or on this route): plain datagrams from now on. */
                dp->udp_gso = false;
                n_msg = build_messages(dp, out, &peer, peer_len);
                sent = 0;
                continue;
            }
            break; /* unreachable peer etc.: the packets are lost, as on a wire */
        }
        sent += r;
    }
    sent = sent >= n_msg ? out : 0; /* counted for keepalive suppression only */
    atomic_fetch_add_explicit(&dp->tx_packets, (uint64_t)sent, memory_order_relaxed);
}

/* Plain TUN: one packet per read, straight into its slot. */
static int tun_read_plain(esp_datapath *dp, int *n)
{
    esp_tx_batch *b = dp->tx;
    const size_t cap = ESP_TX_SLOT - ESP_HEADROOM - 64; /* room for trailer + ICV */
    ssize_t r = read(dp->net.tun_fd, b->buf[*n] + ESP_HEADROOM, cap + 1);
    if (r < 0)
        return errno == EINTR ? 1 : 0;
    if ((size_t)r > cap) {
        atomic_fetch_add_explicit(&dp->drop_too_big, 1, memory_order_relaxed);
        return 1;
    }
    b->inner_len[(*n)++] = (size_t)r;
    return 1;
}

/* Offloaded TUN: a read may be a TSO super-packet, cut into segments here. */
static int tun_read_offload(esp_datapath *dp, int *n)
{
    esp_tx_batch *b = dp->tx;
    const size_t cap = ESP_TX_SLOT - ESP_HEADROOM - 64;
    ssize_t r = read(dp->net.tun_fd, b->gso, sizeof(b->gso));
    if (r < 0)
        return errno == EINTR ? 1 : 0;
    if ((size_t)r <= ESP_VNET_HDR_LEN)
        return 1;
    struct virtio_net_hdr vh;
    memcpy(&vh, b->gso, sizeof(vh));
    uint8_t *pkt = b->gso + ESP_VNET_HDR_LEN;
    size_t len = (size_t)r - ESP_VNET_HDR_LEN;
    uint8_t gso = vh.gso_type & (uint8_t)~VIRTIO_NET_HDR_GSO_ECN;

    if (gso == VIRTIO_NET_HDR_GSO_NONE) {
        if ((vh.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) &&
            !esp_csum_complete(pkt, len, vh.csum_start, vh.csum_offset)) {
            atomic_fetch_add_explicit(&dp->drop_malformed, 1, memory_order_relaxed);
            return 1;
        }
        if (len > cap) {
            atomic_fetch_add_explicit(&dp->drop_too_big, 1, memory_order_relaxed);
            return 1;
        }
        if (*n >= dp->tx_slots) {
            tx_flush(dp, *n);
            *n = 0;
        }
        memcpy(b->buf[*n] + ESP_HEADROOM, pkt, len);
        b->inner_len[(*n)++] = len;
        return 1;
    }
    if (gso != VIRTIO_NET_HDR_GSO_TCPV4 && gso != VIRTIO_NET_HDR_GSO_TCPV6) {
        atomic_fetch_add_explicit(&dp->drop_malformed, 1, memory_order_relaxed);
        return 1;
    }
    /* A super-packet that fits the batch's free slots joins it; a bigger
     * one starts a new batch and, beyond the batch depth, is sent in parts. */
    size_t need = vh.gso_size ? (len + vh.gso_size - 1) / vh.gso_size : (size_t)ESP_TX_BATCH + 1;
    if (*n > 0 && need > (size_t)(dp->tx_slots - *n)) {
        tx_flush(dp, *n);
        *n = 0;
    }
    uint8_t *outs[ESP_TX_BATCH];
    size_t done = 0, total = 0;
    do {
        if (*n >= dp->tx_slots) {
            tx_flush(dp, *n);
            *n = 0;
        }
        for (int i = *n; i < dp->tx_slots; i++)
            outs[i - *n] = b->buf[i] + ESP_HEADROOM;
        size_t segs = esp_tso_segment_part(pkt, len, vh.gso_size, done, outs, cap,
                                           b->inner_len + *n, (size_t)(dp->tx_slots - *n), &total);
        if (segs == 0) {
            atomic_fetch_add_explicit(&dp->drop_too_big, 1, memory_order_relaxed);
            break;
        }
        *n += (int)segs;
        done += segs;
    } while (done < total);
    return 1;
}

int esp_datapath_poll_tun(esp_datapath *dp)
{
    int n = 0, reads = 0;
    /* Plain: fill one batch. Offload: a few super-packets per wakeup. */
    int max_reads = dp->offload ? 8 : ESP_BATCH;
    bool full = false;
    while (reads < max_reads && !(full = n >= dp->tx_slots)) {
        int more = dp->offload ? tun_read_offload(dp, &n) : tun_read_plain(dp, &n);
        if (!more)
            break;
        reads++;
    }
    tx_flush(dp, n);
    return reads == max_reads || full ? ESP_BATCH : reads;
}

/* -------------------------------------------------------- UDP -> TUN */

static void queue_ike(esp_datapath *dp, const uint8_t *data, size_t len,
                      const struct sockaddr_storage *from, socklen_t from_len)
{
    atomic_fetch_add_explicit(&dp->ike_in, 1, memory_order_relaxed);
    pthread_mutex_lock(&dp->q_lock);
    bool full = dp->q_len >= ESP_QUEUE_MAX;
    pthread_mutex_unlock(&dp->q_lock);
    if (full)
        return; /* the engine is behind; IKE retransmits */
    /* IKE packets are rare; allocating for them keeps the queue small. */
    esp_ike_item *it = malloc(sizeof(*it) + len);
    if (!it)
        return;
    it->next = NULL;
    it->from = *from;
    it->from_len = from_len;
    it->len = len;
    memcpy(it->data, data, len);
    pthread_mutex_lock(&dp->q_lock);
    if (dp->q_tail)
        dp->q_tail->next = it;
    else
        dp->q_head = it;
    dp->q_tail = it;
    dp->q_len++;
    pthread_mutex_unlock(&dp->q_lock);
    esp_dp_signal_engine(dp);
}

static void gro_flush(esp_datapath *dp)
{
    esp_gro *g = &dp->gro;
    if (g->len == 0)
        return;
    size_t n = esp_gro_finish(g);
    ssize_t w = write(dp->net.tun_fd, g->buf, n);
    (void)w; /* a full TUN queue drops, like any congested link */
}

/* Up the TUN with a decrypted packet; with offloads, coalesced with its
 * predecessors of the same TCP flow. */
static void deliver(esp_datapath *dp, const uint8_t *inner, size_t len, bool direct)
{
    if (!dp->offload) {
        ssize_t w = write(dp->net.tun_fd, inner, len);
        (void)w; /* a full TUN queue drops, like any congested link */
        return;
    }
    if (direct) { /* alone, behind an empty vnet header (nothing to offload) */
        uint8_t vnet[ESP_VNET_HDR_LEN] = { 0 };
        struct iovec iov[2] = { { vnet, sizeof(vnet) }, { (void *)inner, len } };
        ssize_t w = writev(dp->net.tun_fd, iov, 2);
        (void)w;
        return;
    }
    esp_gro *g = &dp->gro;
    if (esp_gro_append(g, inner, len))
        return;
    gro_flush(dp);
    esp_gro_start(g, inner, len);
}

/* An ESP packet without SA: kept if it is for the CHILD SA being negotiated
 * (esp_datapath_expect_spi) and there is room, else dropped. Caller holds
 * sa_lock for reading and is the one receiving side. */
static void park(esp_datapath *dp, uint32_t spi, const uint8_t *p, size_t len)
{
    uint8_t *copy = NULL;
    if (spi && spi == dp->expect_spi && dp->n_parked < ESP_PARK_MAX && (copy = malloc(len))) {
        memcpy(copy, p, len);
        dp->parked[dp->n_parked] = copy;
        dp->parked_len[dp->n_parked++] = len;
        return;
    }
    atomic_fetch_add_explicit(&dp->drop_no_sa, 1, memory_order_relaxed);
}

/* One received datagram (or one segment of a GRO buffer). */
static void rx_datagram(esp_datapath *dp, uint8_t *p, size_t len,
                        const struct sockaddr_storage *from, socklen_t from_len, bool *rekey)
{
    if (len == 1 && p[0] == 0xff)
        return; /* NAT keepalive from the peer */
    if (len >= NON_ESP_MARKER_LEN && buf_load_be32(p) == 0) {
        queue_ike(dp, p + NON_ESP_MARKER_LEN, len - NON_ESP_MARKER_LEN, from, from_len);
        return;
    }
    if (len < 8) {
        atomic_fetch_add_explicit(&dp->drop_malformed, 1, memory_order_relaxed);
        return;
    }
    uint32_t spi = buf_load_be32(p);
    esp_slot *slot = esp_dp_find_slot_locked(dp, spi);
    if (!slot) {
        park(dp, spi, p, len);
        return;
    }
    esp_dp_rx_esp_locked(dp, slot, p, len, false, rekey);
}

void esp_dp_rx_esp_locked(esp_datapath *dp, esp_slot *slot, uint8_t *p, size_t len, bool direct, bool *rekey)
{
    uint8_t *inner, nh;
    size_t inner_len;
    esp_drop_reason why;
    if (esp_sa_decap(slot->sa, p, len, &inner, &inner_len, &nh, &why) == 0) {
        /* The IP length rules: ESP may carry TFC padding after the packet
         * (RFC 4303 §2.7), which must not reach the TUN (or be coalesced). */
        size_t hdr = nh == ESP_NH_IPV4 ? 20 : 40;
        size_t ip_len = inner_len < hdr ? 0
                        : nh == ESP_NH_IPV4 ? buf_load_be16(inner + 2) : (size_t)buf_load_be16(inner + 4) + 40;
        if (ip_len < hdr || ip_len > inner_len) {
            atomic_fetch_add_explicit(&dp->drop_malformed, 1, memory_order_relaxed);
        } else if (!inbound_allowed_locked(dp, inner, nh)) {
            /* Not this SA's traffic (RFC 4301 §5.2). */
            atomic_fetch_add_explicit(&dp->drop_selector, 1, memory_order_relaxed);
        } else {
            deliver(dp, inner, ip_len, direct);
        }
    }
    *rekey |= esp_sa_rekey_pending(slot->sa);
}

int esp_datapath_poll_udp(esp_datapath *dp)
{
    esp_rx_batch *b = dp->rx;
    size_t slot_size = dp->udp_gro ? ESP_RX_GRO_SLOT : ESP_MAX_PACKET;
    int slots = (int)(ESP_RX_BYTES / slot_size);
    for (int i = 0; i < slots; i++) {
        b->iov[i].iov_base = b->buf + (size_t)i * slot_size;
        b->iov[i].iov_len = slot_size;
        memset(&b->msg[i].msg_hdr, 0, sizeof(b->msg[i].msg_hdr));
        b->msg[i].msg_hdr.msg_iov = &b->iov[i];
        b->msg[i].msg_hdr.msg_iovlen = 1;
        b->msg[i].msg_hdr.msg_name = &b->from[i];
        b->msg[i].msg_hdr.msg_namelen = sizeof(b->from[i]);
        if (dp->udp_gro) {
            b->msg[i].msg_hdr.msg_control = b->ctrl[i].buf;
            b->msg[i].msg_hdr.msg_controllen = sizeof(b->ctrl[i].buf);
        }
    }
    int n = recvmmsg(dp->udp_fd, b->msg, (unsigned)slots, MSG_DONTWAIT, NULL);
    if (n <= 0)
        return 0;

    bool rekey = false;
    pthread_rwlock_rdlock(&dp->sa_lock);
    for (int i = 0; i < n; i++) {
        struct msghdr *mh = &b->msg[i].msg_hdr;
        uint8_t *p = b->iov[i].iov_base;
        size_t len = b->msg[i].msg_len;
        if (mh->msg_flags & MSG_TRUNC) {
            atomic_fetch_add_explicit(&dp->drop_too_big, 1, memory_order_relaxed);
            continue;
        }
        size_t seg = len;
        for (struct cmsghdr *cm = dp->udp_gro ? CMSG_FIRSTHDR(mh) : NULL; cm;
             cm = CMSG_NXTHDR(mh, cm)) {
            if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
                int gso;
                memcpy(&gso, CMSG_DATA(cm), sizeof(gso));
                if (gso > 0)
                    seg = (size_t)gso;
            }
        }
        /* A GRO buffer holds datagrams of `seg` bytes, the last may be shorter. */
        for (size_t off = 0; off < len; off += seg) {
            size_t l = len - off < seg ? len - off : seg;
            rx_datagram(dp, p + off, l, &b->from[i], mh->msg_namelen, &rekey);
        }
    }
    pthread_rwlock_unlock(&dp->sa_lock);
    if (dp->offload)
        gro_flush(dp);
    if (rekey)
        esp_dp_signal_engine(dp);
    return n == slots ? ESP_BATCH : n;
}

/* ------------------------------------------------------------- workers */

static void worker_loop(esp_datapath *dp, int fd, int (*step)(esp_datapath *), void *batch, size_t batch_len)
{
    struct pollfd pfd[2] = { { fd, POLLIN, 0 }, { dp->stop_fd, POLLIN, 0 } };
    bool drain = true;
    for (;;) {
        /* Drain while there is work; sleep in poll only when idle. */
        if (drain)
            while (step(dp) == ESP_BATCH)
                ;
        /* After work, a quiet ESP_IDLE_TRIM_MS gives the batch's pages back. */
        int r = poll(pfd, 2, drain ? ESP_IDLE_TRIM_MS : -1);
        if (r == 0) {
            madvise(batch, batch_len, MADV_DONTNEED);
            drain = false;
            continue;
        }
        drain = true;
        if (r < 0 && errno != EINTR)
            return;
        if (pfd[1].revents)
            return;
        if (fd == dp->net.tun_fd && (pfd[0].revents & (POLLERR | POLLHUP | POLLNVAL))) {
            /* The device is gone (e.g. the TUN deleted under us): polling it
             * again would spin. Wait for the stop request only; the kill
             * switch's blackhole routes hold the traffic meanwhile. */
            pfd[0].fd = -1;
        }
    }
}

static void *tx_main(void *arg)
{
    esp_datapath *dp = arg;
    worker_loop(dp, dp->net.tun_fd, esp_datapath_poll_tun, dp->tx, sizeof(*dp->tx));
    return NULL;
}

static void *rx_main(void *arg)
{
    esp_datapath *dp = arg;
    worker_loop(dp, dp->udp_fd, esp_datapath_poll_udp, dp->rx, sizeof(*dp->rx));
    return NULL;
}

int esp_datapath_start(esp_datapath *dp)
{
    if (!dp->cfg.threads || dp->running)
        return 0;
    uint64_t v;
    while (read(dp->stop_fd, &v, sizeof(v)) > 0)
        ;
    if (pthread_create(&dp->tx_thread, NULL, tx_main, dp) != 0)
        return M2MVPN_E_SYSTEM;
    if (pthread_create(&dp->rx_thread, NULL, rx_main, dp) != 0) {
        uint64_t one = 1;
        ssize_t w = write(dp->stop_fd, &one, sizeof(one));
        (void)w;
        pthread_join(dp->tx_thread, NULL);
        return M2MVPN_E_SYSTEM;
    }
    dp->running = true;
    return 0;
}

void esp_datapath_stop(esp_datapath *dp)
{
    if (!dp || !dp->running)
        return;
    uint64_t one = 1;
    ssize_t w = write(dp->stop_fd, &one, sizeof(one));
    (void)w;
    pthread_join(dp->tx_thread, NULL);
    pthread_join(dp->rx_thread, NULL);
    dp->running = false;
}
