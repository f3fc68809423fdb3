/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The datapath, engine side: lifecycle (UDP socket shared with IKE, TUN),
 * the SA table, the handoff from the workers (queue + eventfd watched by the
 * engine's core_loop), keepalive/lifetime timer and network configuration.
 * The worker side (batched I/O) is esp_io.c.
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
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/udp.h>
#include <unistd.h>

#include <m2mvpn/m2mvpn.h>

#include "../core/buf.h"
#include "../core/secmem.h"
#include "esp_datapath_int.h"
#include "esp_nft.h"

static void set_err(char *err, size_t err_len, const char *what, const char *why)
{
    if (err && err_len)
        snprintf(err, err_len, "%s: %s", what, why);
}

void esp_dp_signal_engine(esp_datapath *dp)
{
    uint64_t one = 1;
    ssize_t w = write(dp->event_fd, &one, sizeof(one));
    (void)w; /* EAGAIN: the counter is already non-zero, the engine will look */
}

/* ------------------------------------------------------------ lifecycle */

/* `peer` as the shared socket takes it: an IPv4 address on a dual-stack
 * (AF_INET6) socket becomes its IPv4-mapped IPv6 form. */
static void peer_for_socket(const esp_datapath *dp, const struct sockaddr *peer, socklen_t len,
                            struct sockaddr_storage *out, socklen_t *out_len)
{
    memset(out, 0, sizeof(*out));
    if (dp->udp_family == AF_INET6 && peer->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)peer;
        struct sockaddr_in6 *m = (struct sockaddr_in6 *)out;
        m->sin6_family = AF_INET6;
        m->sin6_port = in->sin_port;
        m->sin6_addr.s6_addr[10] = 0xff;
        m->sin6_addr.s6_addr[11] = 0xff;
        memcpy(&m->sin6_addr.s6_addr[12], &in->sin_addr, 4);
        *out_len = sizeof(*m);
        return;
    }
    memcpy(out, peer, len);
    *out_len = len;
}

static bool is_v6_any(const struct sockaddr_storage *ss)
{
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
    return ss->ss_family == AF_INET6 && IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr);
}

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
    if (dp->udp_fd < 0 && errno == EAFNOSUPPORT && is_v6_any(&local)) {
        /* A kernel without IPv6: the IPv4 any-address, same port. */
        uint16_t port = ((struct sockaddr_in6 *)&local)->sin6_port;
        memset(&local, 0, sizeof(local));
        struct sockaddr_in *sin = (struct sockaddr_in *)&local;
        sin->sin_family = AF_INET;
        sin->sin_port = port;
        len = sizeof(*sin);
        family = AF_INET;
        dp->udp_fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    }
    dp->udp_family = family;
    if (dp->udp_fd < 0) {
        set_err(err, err_len, "socket", strerror(errno));
        return M2MVPN_E_NETWORK;
    }
    /* No SO_REUSEADDR: another local process could then bind a more
     * specific address on 4500 and take our IKE and ESP datagrams. */
    int one = 1, zero = 0, big = 4 << 20;
    /* Dual-stack on the any-address, whatever net.ipv6.bindv6only says. */
    if (is_v6_any(&local) &&
        setsockopt(dp->udp_fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)) < 0) {
        set_err(err, err_len, "IPV6_V6ONLY", strerror(errno));
        return M2MVPN_E_NETWORK;
    }
    /* Bursts of a whole batch must not overflow the default buffers; the
     * FORCE variants need CAP_NET_ADMIN, the plain ones are the fallback. */
    if (setsockopt(dp->udp_fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big)) < 0)
        setsockopt(dp->udp_fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    if (setsockopt(dp->udp_fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big)) < 0)
        setsockopt(dp->udp_fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    /* Our mark: the rule that sends the protected prefixes to our table
     * skips marked packets, so IKE and ESP reach the gateway even inside a
     * protected prefix (full tunnel). Needs CAP_NET_ADMIN, as the routes do. */
    uint32_t mark = esp_tunnel_table(dp->cfg.tun_name);
    if (setsockopt(dp->udp_fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) < 0 &&
        dp->cfg.configure_network) {
        set_err(err, err_len, "SO_MARK", strerror(errno));
        return M2MVPN_E_NETWORK;
    }
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

static void *map_batch(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
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
    dp->tx_slots = cfg->batch == 0 ? ESP_BATCH_DEFAULT
                 : cfg->batch > ESP_TX_BATCH ? ESP_TX_BATCH : (int)cfg->batch;
    dp->udp_fd = dp->event_fd = dp->stop_fd = -1;
    dp->out_idx = -1;
    pthread_rwlock_init(&dp->sa_lock, NULL);
    pthread_mutex_init(&dp->q_lock, NULL);
    /* Mapped, not allocated: untouched pages cost nothing, and the workers
     * can give theirs back when idle (ESP_IDLE_TRIM_MS). */
    dp->tx = map_batch(sizeof(*dp->tx));
    dp->rx = map_batch(sizeof(*dp->rx));
    int rc = M2MVPN_E_NOMEM;
    if (!dp->tx || !dp->rx)
        goto fail;
    dp->gro.buf = dp->rx->gro_buf;
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

esp_slot *esp_dp_find_slot_locked(esp_datapath *dp, uint32_t spi_in)
{
    for (int i = 0; i < ESP_MAX_SAS; i++)
        if (dp->slots[i].sa && esp_sa_spi_in(dp->slots[i].sa) == spi_in)
            return &dp->slots[i];
    return NULL;
}

/* Free the parked packets (counted as dropped unless they were delivered);
 * caller holds sa_lock for writing. */
static void drop_parked_locked(esp_datapath *dp, bool count)
{
    if (count && dp->n_parked)
        atomic_fetch_add_explicit(&dp->drop_no_sa, dp->n_parked, memory_order_relaxed);
    for (size_t i = 0; i < dp->n_parked; i++) {
        free(dp->parked[i]);
        dp->parked[i] = NULL;
    }
    dp->n_parked = 0;
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
    if (idx < 0 || esp_dp_find_slot_locked(dp, cfg->spi_in)) {
        pthread_rwlock_unlock(&dp->sa_lock);
        esp_sa_free(sa);
        set_err(err, err_len, "install SA", idx < 0 ? "SA table full" : "SPI in use");
        return M2MVPN_E_STATE;
    }
    dp->slots[idx].sa = sa;
    if (cfg->peer_len)
        peer_for_socket(dp, (const struct sockaddr *)&cfg->peer, cfg->peer_len,
                        &dp->slots[idx].peer, &dp->slots[idx].peer_len);
    dp->slots[idx].installed = ++dp->install_seq;
    if (!cfg->inbound_only || dp->out_idx < 0)
        dp->out_idx = idx;
    dp->slots[idx].inbound_only = dp->out_idx != idx;
    pthread_rwlock_unlock(&dp->sa_lock);
    return 0;
}

void esp_datapath_release_parked(esp_datapath *dp, uint32_t spi_in)
{
    pthread_rwlock_wrlock(&dp->sa_lock);
    esp_slot *slot = spi_in && spi_in == dp->expect_spi ? esp_dp_find_slot_locked(dp, spi_in) : NULL;
    if (slot) {
        bool rekey = false;
        for (size_t i = 0; i < dp->n_parked; i++)
            esp_dp_rx_esp_locked(dp, slot, dp->parked[i], dp->parked_len[i], true, &rekey);
        dp->expect_spi = 0;
        drop_parked_locked(dp, false);
        if (rekey)
            esp_dp_signal_engine(dp);
    }
    pthread_rwlock_unlock(&dp->sa_lock);
}

void esp_datapath_expect_spi(esp_datapath *dp, uint32_t spi_in)
{
    pthread_rwlock_wrlock(&dp->sa_lock);
    if (dp->expect_spi != spi_in)
        drop_parked_locked(dp, true);
    dp->expect_spi = spi_in;
    pthread_rwlock_unlock(&dp->sa_lock);
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
    esp_slot *s = esp_dp_find_slot_locked(dp, spi_in);
    if (!s) {
        pthread_rwlock_unlock(&dp->sa_lock);
        return M2MVPN_E_INVAL;
    }
    esp_sa_counters c;
    esp_sa_get_counters(s->sa, &c);
    add_counters(&dp->retired, &c);
    esp_sa_free(s->sa);
    bool was_sending = dp->out_idx == (int)(s - dp->slots);
    memset(s, 0, sizeof(*s));
    if (was_sending || dp->out_idx < 0) {
        /* The newest remaining SA installed to send sends. An SA installed
         * inbound only (the gateway's rekey, sending once the SA it replaces
         * is gone) sends only if it is the one SA left: of several, none is
         * known to be the gateway's current one, and none sends (the kill
         * switch drops) rather than one to a stale peer SA. */
        dp->out_idx = -1;
        uint64_t newest = 0;
        int n_left = 0, last = -1;
        for (int i = 0; i < ESP_MAX_SAS; i++) {
            if (!dp->slots[i].sa)
                continue;
            n_left++;
            last = i;
            if (!dp->slots[i].inbound_only && dp->slots[i].installed > newest) {
                newest = dp->slots[i].installed;
                dp->out_idx = i;
            }
        }
        if (dp->out_idx < 0 && n_left == 1) {
            dp->out_idx = last;
            dp->slots[last].inbound_only = false;
        }
    }
    pthread_rwlock_unlock(&dp->sa_lock);
    return 0;
}

void esp_datapath_remove_all_sas(esp_datapath *dp)
{
    pthread_rwlock_wrlock(&dp->sa_lock);
    for (int i = 0; i < ESP_MAX_SAS; i++) {
        esp_slot *s = &dp->slots[i];
        if (!s->sa)
            continue;
        esp_sa_counters c;
        esp_sa_get_counters(s->sa, &c);
        add_counters(&dp->retired, &c);
        esp_sa_free(s->sa);
        memset(s, 0, sizeof(*s));
    }
    dp->out_idx = -1;
    pthread_rwlock_unlock(&dp->sa_lock);
}

int esp_datapath_get_sa_counters(esp_datapath *dp, uint32_t spi_in, esp_sa_counters *out)
{
    pthread_rwlock_rdlock(&dp->sa_lock);
    esp_slot *s = esp_dp_find_slot_locked(dp, spi_in);
    if (s)
        esp_sa_get_counters(s->sa, out);
    pthread_rwlock_unlock(&dp->sa_lock);
    return s ? 0 : M2MVPN_E_INVAL;
}

/* The TUN MTU: the configured one, or the cipher's overhead from 1500 on
 * the outer header of the outbound SA's peer (an IPv4-mapped one is IPv4
 * on the wire; without an SA, the socket's family). */
static uint32_t auto_mtu(esp_datapath *dp, uint16_t encr_id, uint16_t integ_id)
{
    if (dp->cfg.mtu)
        return dp->cfg.mtu;
    bool v6 = dp->udp_family == AF_INET6;
    pthread_rwlock_rdlock(&dp->sa_lock);
    if (dp->out_idx >= 0) {
        const struct sockaddr_in6 *p6 = (const struct sockaddr_in6 *)&dp->slots[dp->out_idx].peer;
        v6 = p6->sin6_family == AF_INET6 && !IN6_IS_ADDR_V4MAPPED(&p6->sin6_addr);
    }
    pthread_rwlock_unlock(&dp->sa_lock);
    uint32_t mtu = esp_default_mtu(encr_id, integ_id, 1500, v6);
    return mtu ? mtu : 1400;
}

int esp_datapath_set_peer(esp_datapath *dp, uint32_t spi_in, const struct sockaddr *peer,
                          socklen_t peer_len)
{
    if (!dp || !peer || peer_len == 0 || peer_len > sizeof(struct sockaddr_storage))
        return M2MVPN_E_INVAL;
    pthread_rwlock_wrlock(&dp->sa_lock);
    esp_slot *s = esp_dp_find_slot_locked(dp, spi_in);
    if (s) {
        /* The SAs that shared its peer move with it: during a rekey overlap
         * the old one may still be the sending one. Another peer's SA (the
         * old gateway's, during a profile switch) stays. */
        struct sockaddr_storage was = s->peer;
        socklen_t was_len = s->peer_len;
        for (int i = 0; i < ESP_MAX_SAS; i++) {
            esp_slot *o = &dp->slots[i];
            if (o->sa && (o == s || (o->peer_len == was_len && memcmp(&o->peer, &was, was_len) == 0)))
                peer_for_socket(dp, peer, peer_len, &o->peer, &o->peer_len);
        }
    }
    pthread_rwlock_unlock(&dp->sa_lock);
    if (s && dp->cfg.configure_network && dp->mtu_set) {
        /* Another address family: another outer header, another MTU. */
        char why[160] = "";
        uint32_t mtu = auto_mtu(dp, dp->mtu_encr, dp->mtu_integ);
        if (mtu <= ESP_MAX_TUN_MTU && esp_net_set_mtu(&dp->net, mtu, why, sizeof(why)) < 0)
            return M2MVPN_E_TUN;
    }
    return s ? 0 : M2MVPN_E_INVAL;
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
    out->total.dropped[ESP_DROP_SELECTOR] += atomic_load(&dp->drop_selector);
    out->ike_packets_in = atomic_load(&dp->ike_in);
    out->keepalives_out = atomic_load(&dp->keepalives_out);
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
    if (atomic_exchange(&dp->traffic_wanted, false) && dp->cbs.on_traffic)
        dp->cbs.on_traffic(dp->cb_arg);
}

void esp_datapath_hold(esp_datapath *dp, bool on)
{
    pthread_rwlock_wrlock(&dp->sa_lock);
    dp->hold = on;
    dp->hold_reported = false;
    esp_dp_clear_held_locked(dp);
    pthread_rwlock_unlock(&dp->sa_lock);
    atomic_store(&dp->traffic_wanted, false);
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
    struct sockaddr_storage dst;
    socklen_t dst_len;
    peer_for_socket(dp, to, to_len, &dst, &dst_len);
    struct msghdr mh = { .msg_name = &dst, .msg_namelen = dst_len,
                         .msg_iov = iov, .msg_iovlen = 2 };
    if (sendmsg(dp->udp_fd, &mh, 0) < 0)
        return M2MVPN_E_NETWORK;
    return 0;
}

int esp_datapath_set_network(esp_datapath *dp, const esp_tunnel_net *net, char *err,
                             size_t err_len)
{
    if (!dp || !net || net->n_remote_ts > ESP_MAX_TS || net->n_dns > ESP_MAX_DNS ||
        net->n_in_src > ESP_MAX_TS || net->n_in_dst > ESP_MAX_TS)
        return M2MVPN_E_INVAL;
    uint32_t mtu = auto_mtu(dp, net->encr_id, net->integ_id);
    dp->mtu_encr = net->encr_id;
    dp->mtu_integ = net->integ_id;
    dp->mtu_set = true;
    if (mtu > ESP_MAX_TUN_MTU) {
        set_err(err, err_len, "mtu", "larger than the datapath buffers");
        return M2MVPN_E_INVAL;
    }
    memcpy(dp->dns, net->dns, net->n_dns * sizeof(net->dns[0]));
    dp->n_dns = net->n_dns;
    pthread_rwlock_wrlock(&dp->sa_lock);
    memcpy(dp->remote_ts, net->remote_ts, net->n_remote_ts * sizeof(net->remote_ts[0]));
    dp->n_remote_ts = net->n_remote_ts;
    /* Inbound: the negotiated selectors, or what the defaults say. */
    const esp_prefix *src = net->n_in_src ? net->in_src : net->remote_ts;
    dp->n_in_src = net->n_in_src ? net->n_in_src : net->n_remote_ts;
    memcpy(dp->in_src, src, dp->n_in_src * sizeof(dp->in_src[0]));
    if (net->n_in_dst) {
        memcpy(dp->in_dst, net->in_dst, net->n_in_dst * sizeof(dp->in_dst[0]));
        dp->n_in_dst = net->n_in_dst;
    } else if (net->has_vip || net->has_vip2) {
        dp->n_in_dst = 0;
        if (net->has_vip)
            dp->in_dst[dp->n_in_dst++] = net->vip;
        if (net->has_vip2)
            dp->in_dst[dp->n_in_dst++] = net->vip2;
    } else {
        dp->n_in_dst = 0;
    }
    pthread_rwlock_unlock(&dp->sa_lock);
    if (dp->cfg.configure_network) {
        esp_prefix vips[2];
        size_t n_vips = 0;
        if (net->has_vip)
            vips[n_vips++] = net->vip;
        if (net->has_vip2)
            vips[n_vips++] = net->vip2;
        dp->net.ipv6_route_optional = net->ipv6_route_optional;
        int rc = esp_net_apply(&dp->net, mtu, vips, n_vips, net->remote_ts,
                               net->n_remote_ts, dp->cfg.route_metric ? dp->cfg.route_metric : 50,
                               dp->cfg.kill_switch, net->ike_ports,
                               net->n_ike_ports < ESP_MAX_IKE_PORTS ? net->n_ike_ports
                                                                    : ESP_MAX_IKE_PORTS,
                               err, err_len);
        if (rc < 0)
            return rc;
    }
    if (dp->cbs.apply_dns && net->n_dns)
        dp->cbs.apply_dns(dp->cb_arg, net->dns, net->n_dns);
    esp_dp_send_held(dp, net->has_vip ? &net->vip : NULL);
    return 0;
}

size_t esp_datapath_dns(const esp_datapath *dp, esp_prefix *out, size_t max)
{
    size_t n = dp->n_dns < max ? dp->n_dns : max;
    memcpy(out, dp->dns, n * sizeof(out[0]));
    return n;
}

void esp_datapath_kill_switch_info(const esp_datapath *dp, esp_kill_switch_info *out)
{
    memset(out, 0, sizeof(*out));
    out->table = esp_tunnel_table(dp->cfg.tun_name);
    out->rule_priority = ESP_RULE_PRIORITY;
    out->routing = dp->net.routing_active;
    out->nftables = dp->net.nft_active;
    esp_nft_table_name(dp->net.name[0] ? dp->net.name : "m2m0", out->nft_table,
                       sizeof(out->nft_table));
    snprintf(out->nft_why, sizeof(out->nft_why), "%s", dp->net.nft_why);
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

int esp_network_remove(const char *tun_name, char *err, size_t err_len)
{
    esp_net n;
    /* Opening adopts what our table holds for this name (persistent: the
     * device is not dropped before the routes are gone). */
    int rc = esp_net_open(&n, tun_name, true, false, err, err_len);
    if (rc < 0)
        return rc;
    esp_net_remove_all(&n);
    esp_net_close(&n, true);
    return 0;
}

void esp_datapath_free(esp_datapath *dp)
{
    if (!dp)
        return;
    esp_datapath_stop(dp);
    detach(dp);
    remove_all_sas(dp);
    drop_parked_locked(dp, false);
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
    esp_dp_clear_held_locked(dp);
    if (dp->tx)
        munmap(dp->tx, sizeof(*dp->tx));
    if (dp->rx)
        munmap(dp->rx, sizeof(*dp->rx));
    free(dp);
}
