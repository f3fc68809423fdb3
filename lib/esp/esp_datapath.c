/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The running datapath: one UDP socket shared with IKE, the TUN, two worker
 * threads (TUN -> encrypt -> UDP, UDP -> decrypt -> TUN) with preallocated
 * batch buffers and batched socket I/O (recvmmsg/sendmmsg), and the handoff
 * to the engine thread (queue + eventfd watched by the engine's core_loop).
 *
 * Locking: the SA table is guarded by a rwlock. Workers take it for reading
 * once per batch; install/remove (engine thread) take it for writing, so an
 * SA is never freed while a worker uses it. The handoff queue has its own
 * mutex. Counters are atomics.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/udp.h>
#include <unistd.h>

#include <m2mvpn/m2mvpn.h>

#include "../core/buf.h"
#include "../core/secmem.h"
#include "esp.h"
#include "esp_net.h"
#include "esp_offload.h"

#define ESP_MAX_SAS 4
#define ESP_BATCH 32            /* UDP datagrams per recvmmsg */
#define ESP_TX_BATCH 128        /* ESP packets per send (a 64 KiB TSO packet at MSS 536) */
/* Room in front of an inner packet for SPI, sequence number and IV. */
#define ESP_HEADROOM 32
#define ESP_TX_SLOT 2048        /* inner up to ESP_TX_SLOT - headroom - trailer */
#define ESP_QUEUE_MAX 64        /* IKE packets waiting for the engine */
#define NON_ESP_MARKER_LEN 4

typedef struct esp_slot {
    esp_sa *sa;
    struct sockaddr_storage peer;
    socklen_t peer_len;
    uint64_t installed;         /* install order: the newest sends */
} esp_slot;

typedef struct esp_ike_item {
    struct esp_ike_item *next;
    struct sockaddr_storage from;
    socklen_t from_len;
    size_t len;
    uint8_t data[];
} esp_ike_item;

typedef struct esp_tx_batch {
    uint8_t buf[ESP_TX_BATCH][ESP_TX_SLOT];
    size_t inner_len[ESP_TX_BATCH];
    struct iovec iov[ESP_TX_BATCH];
    struct mmsghdr msg[ESP_TX_BATCH];
    union {                                      /* UDP_SEGMENT per message */
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } ctrl[ESP_TX_BATCH];
    uint8_t gso[ESP_VNET_HDR_LEN + ESP_GSO_MAX];  /* offload: one TUN read */
} esp_tx_batch;

/* 512 KiB either way: 32 datagrams of up to 16 KiB, or with UDP GRO 8
 * coalesced buffers of up to 64 KiB. */
#define ESP_RX_BYTES (ESP_BATCH * ESP_MAX_PACKET)
#define ESP_RX_GRO_SLOT 65536

typedef struct esp_rx_batch {
    uint8_t buf[ESP_RX_BYTES];
    struct iovec iov[ESP_BATCH];
    struct mmsghdr msg[ESP_BATCH];
    struct sockaddr_storage from[ESP_BATCH];
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctrl[ESP_BATCH];
    uint8_t gro_buf[ESP_VNET_HDR_LEN + ESP_GSO_MAX]; /* offload: coalesced write */
    esp_gro gro;
} esp_rx_batch;

struct esp_datapath {
    esp_datapath_config cfg;
    int udp_fd;
    int event_fd;               /* workers -> engine */
    int stop_fd;                /* engine -> workers */
    esp_net net;
    bool net_open;

    pthread_rwlock_t sa_lock;
    esp_slot slots[ESP_MAX_SAS];
    int out_idx;                /* -1: no outbound SA (kill switch drops) */
    uint64_t install_seq;
    esp_sa_counters retired;    /* counters of removed SAs (under sa_lock) */

    pthread_mutex_t q_lock;
    esp_ike_item *q_head, *q_tail;
    size_t q_len;

    _Atomic uint64_t drop_no_sa, drop_malformed, drop_too_big, ike_in, keepalives_out;
    _Atomic uint64_t tx_packets;   /* for keepalive suppression */
    bool offload;                  /* !cfg.no_offload */
    bool udp_gso, udp_gro;         /* kernel accepted UDP_SEGMENT / UDP_GRO */

    core_loop *loop;
    core_io event_io, tun_io, udp_io;
    bool event_io_added, tun_io_added, udp_io_added;
    core_timer tick;
    esp_datapath_callbacks cbs;
    void *cb_arg;
    uint32_t keepalive_s;
    uint64_t last_keepalive_ms, last_keepalive_tx;

    esp_prefix dns[ESP_MAX_DNS];
    size_t n_dns;
    esp_prefix remote_ts[ESP_MAX_TS];   /* under sa_lock: outbound filter */
    size_t n_remote_ts;

    bool running;
    pthread_t tx_thread, rx_thread;
    esp_tx_batch *tx;
    esp_rx_batch *rx;
};

static void set_err(char *err, size_t err_len, const char *what, const char *why)
{
    if (err && err_len)
        snprintf(err, err_len, "%s: %s", what, why);
}

static void signal_engine(esp_datapath *dp)
{
    uint64_t one = 1;
    ssize_t w = write(dp->event_fd, &one, sizeof(one));
    (void)w; /* EAGAIN: the counter is already non-zero, the engine will look */
}

/* ------------------------------------------------------------ lifecycle */

static int open_udp(esp_datapath *dp, char *err, size_t err_len)
{
    struct sockaddr_storage local = dp->cfg.local;
    socklen_t len = dp->cfg.local_len;
    int family = local.ss_family ? local.ss_family : AF_INET;
    if (!local.ss_family) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&local;
        sin->sin_family = AF_INET;
        len = sizeof(*sin);
    }
    if (family == AF_INET && ((struct sockaddr_in *)&local)->sin_port == 0)
        ((struct sockaddr_in *)&local)->sin_port = htons(ESP_UDP_PORT);
    if (family == AF_INET6 && ((struct sockaddr_in6 *)&local)->sin6_port == 0)
        ((struct sockaddr_in6 *)&local)->sin6_port = htons(ESP_UDP_PORT);

    dp->udp_fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (dp->udp_fd < 0) {
        set_err(err, err_len, "socket", strerror(errno));
        return M2MVPN_E_NETWORK;
    }
    int one = 1, big = 4 << 20;
    setsockopt(dp->udp_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    /* Bursts of a whole batch must not overflow the default buffers; the
     * FORCE variants need CAP_NET_ADMIN, the plain ones are the fallback. */
    if (setsockopt(dp->udp_fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big)) < 0)
        setsockopt(dp->udp_fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    if (setsockopt(dp->udp_fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big)) < 0)
        setsockopt(dp->udp_fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    if (dp->cfg.underlay_ifname[0] &&
        setsockopt(dp->udp_fd, SOL_SOCKET, SO_BINDTODEVICE, dp->cfg.underlay_ifname,
                   (socklen_t)strlen(dp->cfg.underlay_ifname)) < 0) {
        set_err(err, err_len, "SO_BINDTODEVICE", strerror(errno));
        return M2MVPN_E_NETWORK;
    }
    if (dp->offload) {
        dp->udp_gro = setsockopt(dp->udp_fd, SOL_UDP, UDP_GRO, &one, sizeof(one)) == 0;
        dp->udp_gso = true; /* tried per send; switched off on the first refusal */
    }
    if (bind(dp->udp_fd, (struct sockaddr *)&local, len) < 0) {
        set_err(err, err_len, "bind UDP 4500", strerror(errno));
        return M2MVPN_E_NETWORK;
    }
    return 0;
}

int esp_datapath_new(const esp_datapath_config *cfg, esp_datapath **ret, char *err,
                     size_t err_len)
{
    if (!cfg || !ret)
        return M2MVPN_E_INVAL;
    esp_datapath *dp = calloc(1, sizeof(*dp));
    if (!dp)
        return M2MVPN_E_NOMEM;
    dp->cfg = *cfg;
    dp->offload = !cfg->no_offload;
    dp->udp_fd = dp->event_fd = dp->stop_fd = -1;
    dp->out_idx = -1;
    pthread_rwlock_init(&dp->sa_lock, NULL);
    pthread_mutex_init(&dp->q_lock, NULL);
    dp->tx = malloc(sizeof(*dp->tx));
    dp->rx = malloc(sizeof(*dp->rx));
    int rc = M2MVPN_E_NOMEM;
    if (!dp->tx || !dp->rx)
        goto fail;
    memset(&dp->rx->gro, 0, sizeof(dp->rx->gro));
    dp->rx->gro.buf = dp->rx->gro_buf;
    dp->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    dp->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (dp->event_fd < 0 || dp->stop_fd < 0) {
        set_err(err, err_len, "eventfd", strerror(errno));
        rc = M2MVPN_E_SYSTEM;
        goto fail;
    }
    rc = open_udp(dp, err, err_len);
    if (rc < 0)
        goto fail;
    rc = esp_net_open(&dp->net, cfg->tun_name, cfg->kill_switch, !cfg->no_offload, err,
                      err_len);
    if (rc < 0)
        goto fail;
    dp->net_open = true;
    *ret = dp;
    return 0;
fail:
    esp_datapath_free(dp);
    return rc;
}

/* ------------------------------------------------------------- SA table */

static esp_slot *find_slot_locked(esp_datapath *dp, uint32_t spi_in)
{
    for (int i = 0; i < ESP_MAX_SAS; i++)
        if (dp->slots[i].sa && esp_sa_spi_in(dp->slots[i].sa) == spi_in)
            return &dp->slots[i];
    return NULL;
}

int esp_datapath_install_sa(esp_datapath *dp, const esp_sa_config *cfg, char *err,
                            size_t err_len)
{
    esp_sa *sa;
    int rc = esp_sa_new(cfg, &sa, err, err_len);
    if (rc < 0)
        return rc;
    pthread_rwlock_wrlock(&dp->sa_lock);
    int idx = -1;
    for (int i = 0; i < ESP_MAX_SAS && idx < 0; i++)
        if (!dp->slots[i].sa)
            idx = i;
    if (idx < 0 || find_slot_locked(dp, cfg->spi_in)) {
        pthread_rwlock_unlock(&dp->sa_lock);
        esp_sa_free(sa);
        set_err(err, err_len, "install SA", idx < 0 ? "SA table full" : "SPI in use");
        return M2MVPN_E_STATE;
    }
    dp->slots[idx].sa = sa;
    dp->slots[idx].peer = cfg->peer;
    dp->slots[idx].peer_len = cfg->peer_len;
    dp->slots[idx].installed = ++dp->install_seq;
    dp->out_idx = idx;
    pthread_rwlock_unlock(&dp->sa_lock);
    return 0;
}

static void add_counters(esp_sa_counters *sum, const esp_sa_counters *c)
{
    sum->packets_in += c->packets_in;
    sum->bytes_in += c->bytes_in;
    sum->packets_out += c->packets_out;
    sum->bytes_out += c->bytes_out;
    for (int i = 0; i < ESP_DROP__COUNT; i++)
        sum->dropped[i] += c->dropped[i];
}

int esp_datapath_remove_sa(esp_datapath *dp, uint32_t spi_in)
{
    pthread_rwlock_wrlock(&dp->sa_lock);
    esp_slot *s = find_slot_locked(dp, spi_in);
    if (!s) {
        pthread_rwlock_unlock(&dp->sa_lock);
        return M2MVPN_E_INVAL;
    }
    esp_sa_counters c;
    esp_sa_get_counters(s->sa, &c);
    add_counters(&dp->retired, &c);
    esp_sa_free(s->sa);
    memset(s, 0, sizeof(*s));
    /* The newest remaining SA sends; none left: the kill switch drops. */
    dp->out_idx = -1;
    uint64_t newest = 0;
    for (int i = 0; i < ESP_MAX_SAS; i++)
        if (dp->slots[i].sa && dp->slots[i].installed > newest) {
            newest = dp->slots[i].installed;
            dp->out_idx = i;
        }
    pthread_rwlock_unlock(&dp->sa_lock);
    return 0;
}

void esp_datapath_get_counters(esp_datapath *dp, esp_datapath_counters *out)
{
    memset(out, 0, sizeof(*out));
    pthread_rwlock_rdlock(&dp->sa_lock);
    out->total = dp->retired;
    for (int i = 0; i < ESP_MAX_SAS; i++) {
        if (dp->slots[i].sa) {
            esp_sa_counters c;
            esp_sa_get_counters(dp->slots[i].sa, &c);
            add_counters(&out->total, &c);
        }
    }
    pthread_rwlock_unlock(&dp->sa_lock);
    out->total.dropped[ESP_DROP_NO_SA] += atomic_load(&dp->drop_no_sa);
    out->total.dropped[ESP_DROP_MALFORMED] += atomic_load(&dp->drop_malformed);
    out->total.dropped[ESP_DROP_TOO_BIG] += atomic_load(&dp->drop_too_big);
    out->ike_packets_in = atomic_load(&dp->ike_in);
    out->keepalives_out = atomic_load(&dp->keepalives_out);
}

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

/* Only what the remote traffic selectors cover goes into the SA; the rest
 * (e.g. IPv6 link-local chatter on the TUN) has no SA. No selectors: all. */
static bool covered_by_ts_locked(const esp_datapath *dp, const uint8_t *pkt, uint8_t nh)
{
    if (dp->n_remote_ts == 0)
        return true;
    int family = nh == ESP_NH_IPV4 ? AF_INET : AF_INET6;
    const uint8_t *dst = nh == ESP_NH_IPV4 ? pkt + 16 : pkt + 24;
    for (size_t i = 0; i < dp->n_remote_ts; i++)
        if (dp->remote_ts[i].family == family && prefix_contains(&dp->remote_ts[i], dst))
            return true;
    return false;
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
        /* Kill switch: no SA, nothing leaves. */
        atomic_fetch_add_explicit(&dp->drop_no_sa, (uint64_t)n, memory_order_relaxed);
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
            signal_engine(dp);
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
        if (*n == ESP_TX_BATCH) {
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
    size_t need = vh.gso_size ? (len + vh.gso_size - 1) / vh.gso_size : ESP_TX_BATCH + 1;
    if (need > (size_t)(ESP_TX_BATCH - *n)) {
        tx_flush(dp, *n);
        *n = 0;
    }
    uint8_t *outs[ESP_TX_BATCH];
    for (int i = *n; i < ESP_TX_BATCH; i++)
        outs[i - *n] = b->buf[i] + ESP_HEADROOM;
    size_t segs = esp_tso_segment(pkt, len, vh.gso_size, outs, cap, b->inner_len + *n,
                                  (size_t)(ESP_TX_BATCH - *n));
    if (segs == 0)
        atomic_fetch_add_explicit(&dp->drop_too_big, 1, memory_order_relaxed);
    *n += (int)segs;
    return 1;
}

int esp_datapath_poll_tun(esp_datapath *dp)
{
    int n = 0, reads = 0;
    /* Plain: fill one batch. Offload: a few super-packets per wakeup. */
    int max_reads = dp->offload ? 8 : ESP_BATCH;
    while (reads < max_reads && n < ESP_TX_BATCH) {
        int more = dp->offload ? tun_read_offload(dp, &n) : tun_read_plain(dp, &n);
        if (!more)
            break;
        reads++;
    }
    tx_flush(dp, n);
    return reads == max_reads ? ESP_BATCH : reads;
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
    signal_engine(dp);
}

static void gro_flush(esp_datapath *dp)
{
    esp_gro *g = &dp->rx->gro;
    if (g->len == 0)
        return;
    size_t n = esp_gro_finish(g);
    ssize_t w = write(dp->net.tun_fd, g->buf, n);
    (void)w; /* a full TUN queue drops, like any congested link */
}

/* Up the TUN with a decrypted packet; with offloads, coalesced with its
 * predecessors of the same TCP flow. */
static void deliver(esp_datapath *dp, const uint8_t *inner, size_t len)
{
    if (!dp->offload) {
        ssize_t w = write(dp->net.tun_fd, inner, len);
        (void)w; /* a full TUN queue drops, like any congested link */
        return;
    }
    esp_gro *g = &dp->rx->gro;
    if (esp_gro_append(g, inner, len))
        return;
    gro_flush(dp);
    esp_gro_start(g, inner, len);
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
    esp_slot *slot = find_slot_locked(dp, buf_load_be32(p));
    if (!slot) {
        atomic_fetch_add_explicit(&dp->drop_no_sa, 1, memory_order_relaxed);
        return;
    }
    uint8_t *inner, nh;
    size_t inner_len;
    esp_drop_reason why;
    if (esp_sa_decap(slot->sa, p, len, &inner, &inner_len, &nh, &why) == 0)
        deliver(dp, inner, inner_len);
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
        signal_engine(dp);
    return n == slots ? ESP_BATCH : n;
}

/* ------------------------------------------------------------- workers */

static void worker_loop(esp_datapath *dp, int fd, int (*step)(esp_datapath *))
{
    struct pollfd pfd[2] = { { fd, POLLIN, 0 }, { dp->stop_fd, POLLIN, 0 } };
    for (;;) {
        /* Drain while there is work; sleep in poll only when idle. */
        while (step(dp) == ESP_BATCH)
            ;
        if (poll(pfd, 2, -1) < 0 && errno != EINTR)
            return;
        if (pfd[1].revents)
            return;
    }
}

static void *tx_main(void *arg)
{
    esp_datapath *dp = arg;
    worker_loop(dp, dp->net.tun_fd, esp_datapath_poll_tun);
    return NULL;
}

static void *rx_main(void *arg)
{
    esp_datapath *dp = arg;
    worker_loop(dp, dp->udp_fd, esp_datapath_poll_udp);
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

/* --------------------------------------------------- engine-thread side */

static void deliver_rekeys(esp_datapath *dp, uint64_t now)
{
    uint32_t spi[ESP_MAX_SAS], req[ESP_MAX_SAS];
    int n = 0;
    pthread_rwlock_rdlock(&dp->sa_lock);
    for (int i = 0; i < ESP_MAX_SAS; i++) {
        if (!dp->slots[i].sa)
            continue;
        uint32_t r = esp_sa_take_rekey_requests(dp->slots[i].sa, now);
        if (r) {
            spi[n] = esp_sa_spi_in(dp->slots[i].sa);
            req[n++] = r;
        }
    }
    pthread_rwlock_unlock(&dp->sa_lock);
    /* Callbacks run without the lock: they may remove or install SAs. */
    for (int i = 0; i < n; i++)
        for (int r = 0; r < ESP_REKEY__COUNT; r++)
            if ((req[i] & (1u << r)) && dp->cbs.on_rekey)
                dp->cbs.on_rekey(dp->cb_arg, spi[i], (esp_rekey_reason)r);
}

static void on_event_fd(void *arg, uint32_t events)
{
    esp_datapath *dp = arg;
    uint64_t v;
    (void)events;
    ssize_t r = read(dp->event_fd, &v, sizeof(v));
    (void)r;
    for (;;) {
        pthread_mutex_lock(&dp->q_lock);
        esp_ike_item *it = dp->q_head;
        if (it) {
            dp->q_head = it->next;
            if (!dp->q_head)
                dp->q_tail = NULL;
            dp->q_len--;
        }
        pthread_mutex_unlock(&dp->q_lock);
        if (!it)
            break;
        if (dp->cbs.on_ike_packet)
            dp->cbs.on_ike_packet(dp->cb_arg, it->data, it->len,
                                  (struct sockaddr *)&it->from, it->from_len);
        free(it);
    }
    deliver_rekeys(dp, core_monotonic_ms());
}

static void send_keepalive(esp_datapath *dp)
{
    struct sockaddr_storage peer;
    socklen_t peer_len = 0;
    pthread_rwlock_rdlock(&dp->sa_lock);
    if (dp->out_idx >= 0) {
        peer = dp->slots[dp->out_idx].peer;
        peer_len = dp->slots[dp->out_idx].peer_len;
    }
    pthread_rwlock_unlock(&dp->sa_lock);
    if (!peer_len)
        return;
    static const uint8_t ka = 0xff; /* RFC 3948 §2.3 */
    if (sendto(dp->udp_fd, &ka, 1, 0, (struct sockaddr *)&peer, peer_len) == 1)
        atomic_fetch_add(&dp->keepalives_out, 1);
}

static void on_tick(void *arg)
{
    esp_datapath *dp = arg;
    uint64_t now = core_monotonic_ms();
    if (dp->keepalive_s && now - dp->last_keepalive_ms >= dp->keepalive_s * 1000ull) {
        /* Only needed when nothing else went out during the interval. */
        uint64_t tx = atomic_load(&dp->tx_packets);
        if (tx == dp->last_keepalive_tx)
            send_keepalive(dp);
        dp->last_keepalive_tx = atomic_load(&dp->tx_packets);
        dp->last_keepalive_ms = now;
    }
    deliver_rekeys(dp, now); /* time lifetimes */
    core_timer_arm(dp->loop, &dp->tick, 1000);
}

static void on_tun_ready(void *arg, uint32_t events)
{
    (void)events;
    esp_datapath *dp = arg;
    while (esp_datapath_poll_tun(dp) == ESP_BATCH)
        ;
}

static void on_udp_ready(void *arg, uint32_t events)
{
    (void)events;
    esp_datapath *dp = arg;
    while (esp_datapath_poll_udp(dp) == ESP_BATCH)
        ;
}

int esp_datapath_attach(esp_datapath *dp, core_loop *loop, const esp_datapath_callbacks *cbs,
                        void *arg)
{
    if (!dp || !loop || dp->loop)
        return M2MVPN_E_INVAL;
    if (cbs)
        dp->cbs = *cbs;
    dp->cb_arg = arg;
    dp->loop = loop;
    int rc = core_io_add(loop, &dp->event_io, dp->event_fd, EPOLLIN, on_event_fd, dp);
    if (rc < 0)
        return M2MVPN_E_SYSTEM;
    dp->event_io_added = true;
    if (!dp->cfg.threads) {
        /* Single-threaded use: the engine loop moves the packets itself. */
        if (core_io_add(loop, &dp->tun_io, dp->net.tun_fd, EPOLLIN, on_tun_ready, dp) < 0 ||
            core_io_add(loop, &dp->udp_io, dp->udp_fd, EPOLLIN, on_udp_ready, dp) < 0)
            return M2MVPN_E_SYSTEM;
        dp->tun_io_added = dp->udp_io_added = true;
    }
    core_timer_init(&dp->tick, on_tick, dp);
    dp->last_keepalive_ms = core_monotonic_ms();
    core_timer_arm(loop, &dp->tick, 1000);
    return 0;
}

static void detach(esp_datapath *dp)
{
    if (!dp->loop)
        return;
    if (dp->event_io_added)
        core_io_remove(dp->loop, &dp->event_io);
    if (dp->tun_io_added)
        core_io_remove(dp->loop, &dp->tun_io);
    if (dp->udp_io_added)
        core_io_remove(dp->loop, &dp->udp_io);
    dp->event_io_added = dp->tun_io_added = dp->udp_io_added = false;
    core_timer_cancel(dp->loop, &dp->tick);
    dp->loop = NULL;
}

void esp_datapath_set_keepalive(esp_datapath *dp, uint32_t interval_s)
{
    dp->keepalive_s = interval_s;
}

int esp_datapath_send_ike(esp_datapath *dp, const uint8_t *msg, size_t len,
                          const struct sockaddr *to, socklen_t to_len)
{
    if (!dp || !msg || !to || len == 0 || len > ESP_MAX_PACKET - NON_ESP_MARKER_LEN)
        return M2MVPN_E_INVAL;
    static const uint8_t marker[NON_ESP_MARKER_LEN] = {0};
    struct iovec iov[2] = { { (void *)marker, sizeof(marker) }, { (void *)msg, len } };
    struct msghdr mh = { .msg_name = (void *)to, .msg_namelen = to_len,
                         .msg_iov = iov, .msg_iovlen = 2 };
    if (sendmsg(dp->udp_fd, &mh, 0) < 0)
        return M2MVPN_E_NETWORK;
    return 0;
}

int esp_datapath_set_network(esp_datapath *dp, const esp_tunnel_net *net, char *err,
                             size_t err_len)
{
    if (!dp || !net || net->n_remote_ts > ESP_MAX_TS || net->n_dns > ESP_MAX_DNS)
        return M2MVPN_E_INVAL;
    uint32_t mtu = dp->cfg.mtu;
    if (!mtu) {
        bool v6 = dp->cfg.local.ss_family == AF_INET6;
        mtu = esp_default_mtu(net->encr_id, net->integ_id, 1500, v6);
        if (!mtu)
            mtu = 1400;
    }
    if (mtu > ESP_TX_SLOT - ESP_HEADROOM - 64) {
        set_err(err, err_len, "mtu", "larger than the datapath buffers");
        return M2MVPN_E_INVAL;
    }
    memcpy(dp->dns, net->dns, net->n_dns * sizeof(net->dns[0]));
    dp->n_dns = net->n_dns;
    pthread_rwlock_wrlock(&dp->sa_lock);
    memcpy(dp->remote_ts, net->remote_ts, net->n_remote_ts * sizeof(net->remote_ts[0]));
    dp->n_remote_ts = net->n_remote_ts;
    pthread_rwlock_unlock(&dp->sa_lock);
    if (dp->cfg.configure_network) {
        int rc = esp_net_apply(&dp->net, mtu, net->has_vip ? &net->vip : NULL, net->remote_ts,
                               net->n_remote_ts, dp->cfg.route_metric ? dp->cfg.route_metric : 50,
                               dp->cfg.kill_switch, err, err_len);
        if (rc < 0)
            return rc;
    }
    if (dp->cbs.apply_dns && net->n_dns)
        dp->cbs.apply_dns(dp->cb_arg, net->dns, net->n_dns);
    return 0;
}

size_t esp_datapath_dns(const esp_datapath *dp, esp_prefix *out, size_t max)
{
    size_t n = dp->n_dns < max ? dp->n_dns : max;
    memcpy(out, dp->dns, n * sizeof(out[0]));
    return n;
}

int esp_datapath_tun_ifindex(const esp_datapath *dp) { return dp->net.ifindex; }
int esp_datapath_udp_fd(const esp_datapath *dp) { return dp->udp_fd; }

static void remove_all_sas(esp_datapath *dp)
{
    for (int i = 0; i < ESP_MAX_SAS; i++)
        if (dp->slots[i].sa)
            esp_datapath_remove_sa(dp, esp_sa_spi_in(dp->slots[i].sa));
}

void esp_datapath_teardown(esp_datapath *dp, bool remove_all)
{
    if (!dp)
        return;
    esp_datapath_stop(dp);
    remove_all_sas(dp);
    if (remove_all && dp->net_open) {
        esp_net_remove_all(&dp->net);
        esp_net_close(&dp->net, true);
        dp->net_open = false;
    }
}

void esp_datapath_free(esp_datapath *dp)
{
    if (!dp)
        return;
    esp_datapath_stop(dp);
    detach(dp);
    remove_all_sas(dp);
    if (dp->net_open) {
        /* Kill switch on: leave the persistent TUN, its routes and the
         * blackholes in place (see esp.h); off: remove everything. */
        if (!dp->cfg.kill_switch)
            esp_net_remove_all(&dp->net);
        esp_net_close(&dp->net, !dp->cfg.kill_switch);
    }
    if (dp->udp_fd >= 0)
        close(dp->udp_fd);
    if (dp->event_fd >= 0)
        close(dp->event_fd);
    if (dp->stop_fd >= 0)
        close(dp->stop_fd);
    while (dp->q_head) {
        esp_ike_item *it = dp->q_head;
        dp->q_head = it->next;
        free(it);
    }
    pthread_rwlock_destroy(&dp->sa_lock);
    pthread_mutex_destroy(&dp->q_lock);
    free(dp->tx);
    free(dp->rx);
    free(dp);
}
