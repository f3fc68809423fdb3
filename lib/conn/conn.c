/* SPDX-License-Identifier: Apache-2.0 */
#include "conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "core/secmem.h"
#include "cred/cred.h"
#include "crypto/pki.h"
#include "esp/esp.h"
#include "ike/ike.h"

#define BACKOFF_FIRST_MS 1000
#define BACKOFF_MAX_MS 60000
#define STATUS_REFRESH_MS 1000

struct conn {
    core_loop *loop;
    core_log *log;
    conn_hooks hooks;

    profile_set *set;
    const profile *prof;
    m2mvpn_state state;
    bool want_up;
    size_t gw_index;
    unsigned failures;            /* consecutive failed attempts */
    core_timer reconnect_timer;
    core_timer reap_timer;        /* frees a finished IKE SA outside its callbacks */
    core_timer refresh_timer;     /* counters into the status snapshot */

    int sock500;
    core_io io500;
    struct sockaddr_storage gw;   /* port 500 */
    socklen_t gw_len;
    char gw_text[64];

    esp_datapath *dp;
    bool dp_started;
    bool drop_dp;                 /* release the datapath from the reap timer */
    uint32_t spi_in;              /* installed CHILD SA, 0 = none */
    cred_provider *cred;
    pki_trust *trust;
    ike_sa *sa;
    ike_sa *dead_sa;
    bool pin_wait;

    char vip[48];
    int64_t connected_since;
    char ike_alg[96], esp_alg[96];
};

static void set_state(conn *c, m2mvpn_state st, int err, const char *detail)
{
    c->state = st;
    if (c->hooks.on_state)
        c->hooks.on_state(c->hooks.arg, st, err, detail);
}

static void close_socket(conn *c)
{
    if (c->sock500 >= 0) {
        core_io_remove(c->loop, &c->io500);
        close(c->sock500);
        c->sock500 = -1;
    }
}

static void reap(void *arg)
{
    conn *c = arg;
    ike_sa_free(c->dead_sa);
    c->dead_sa = NULL;
    if (c->drop_dp && c->dp && !c->want_up) {
        esp_datapath_teardown(c->dp, true);
        esp_datapath_free(c->dp);
        c->dp = NULL;
        c->dp_started = false;
    }
    c->drop_dp = false;
}

/* Retire the IKE SA: it may be inside one of its own callbacks, so it is
 * freed from a timer. */
static void retire_sa(conn *c)
{
    if (!c->sa)
        return;
    if (c->dead_sa)
        ike_sa_free(c->dead_sa);
    c->dead_sa = c->sa;
    c->sa = NULL;
    core_timer_arm(c->loop, &c->reap_timer, 0);
}

static void drop_child(conn *c)
{
    if (c->dp && c->spi_in) {
        esp_datapath_remove_sa(c->dp, c->spi_in);
        c->spi_in = 0;
    }
    c->vip[0] = '\0';
    c->connected_since = 0;
}

/* Down on purpose: without the kill switch nothing of the tunnel stays (TUN,
 * address, routes); with it, the routes keep protected traffic in the TUN
 * until the profile is removed on purpose (conn_remove_profile). */
static void drop_network_unless_kill_switch(conn *c)
{
    if (!c->dp || (c->prof && c->prof->tunnel.kill_switch))
        return;
    /* We may be inside one of the datapath's own callbacks: later. */
    c->drop_dp = true;
    core_timer_arm(c->loop, &c->reap_timer, 0);
}

/* ------------------------------------------------------------- I/O */

static void on_sock500(void *arg, uint32_t events)
{
    conn *c = arg;
    (void)events;
    uint8_t buf[ESP_MAX_PACKET];
    for (int i = 0; i < 16; i++) {
        ssize_t n = recv(c->sock500, buf, sizeof(buf), 0);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                LOG_DBG(c->log, "conn", "port 500 socket: %s", strerror(errno));
            return;
        }
        if (c->sa)
            ike_sa_input(c->sa, buf, (size_t)n, false);
    }
}

static void on_ike_packet(void *arg, const uint8_t *data, size_t len, const struct sockaddr *from,
                          socklen_t from_len)
{
    conn *c = arg;
    (void)from;
    (void)from_len;
    if (c->sa)
        ike_sa_input(c->sa, data, len, true);
}

static void on_rekey(void *arg, uint32_t spi_in, esp_rekey_reason reason)
{
    conn *c = arg;
    LOG_WARN(c->log, "conn", "CHILD SA %08x: %s; rekeying is not implemented yet, reconnecting",
             spi_in, esp_rekey_reason_name(reason));
    if (esp_rekey_reason_is_hard(reason) && c->sa)
        ike_sa_close(c->sa);
}

static int ike_send(void *arg, const uint8_t *msg, size_t len, bool natt)
{
    conn *c = arg;
    if (natt) {
        struct sockaddr_storage to = c->gw;
        if (to.ss_family == AF_INET)
            ((struct sockaddr_in *)&to)->sin_port = htons(ESP_UDP_PORT);
        else
            ((struct sockaddr_in6 *)&to)->sin6_port = htons(ESP_UDP_PORT);
        return esp_datapath_send_ike(c->dp, msg, len, (struct sockaddr *)&to, c->gw_len);
    }
    return send(c->sock500, msg, len, 0) < 0 ? M2MVPN_E_NETWORK : 0;
}

/* --------------------------------------------------------- attempts */

static void schedule_retry(conn *c, int err, const char *detail);

static void refresh(void *arg)
{
    conn *c = arg;
    if (c->state != M2MVPN_STATE_CONNECTED)
        return;
    set_state(c, M2MVPN_STATE_CONNECTED, 0, NULL); /* same state: status refresh only */
    core_timer_arm(c->loop, &c->refresh_timer, STATUS_REFRESH_MS);
}

static void on_established(void *arg, const ike_child_result *r)
{
    conn *c = arg;
    char err[256] = "";
    esp_sa_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.spi_in = r->spi_in;
    cfg.spi_out = r->spi_out;
    cfg.encr_id = r->encr_id;
    cfg.encr_key_bits = r->encr_key_bits;
    cfg.integ_id = r->integ_id;
    cfg.esn = r->esn;
    cfg.replay_window = c->prof->esp.replay_window;
    cfg.lifetime.hard_seconds = c->prof->esp.lifetime_s;
    cfg.lifetime.soft_seconds = c->prof->esp.lifetime_s - c->prof->esp.lifetime_s / 10;
    memcpy(&cfg.peer, &c->gw, c->gw_len);
    cfg.peer_len = c->gw_len;
    if (cfg.peer.ss_family == AF_INET)
        ((struct sockaddr_in *)&cfg.peer)->sin_port = htons(ESP_UDP_PORT);
    else
        ((struct sockaddr_in6 *)&cfg.peer)->sin6_port = htons(ESP_UDP_PORT);
    int rc = esp_keys_from_keymat(&cfg, r->keymat, r->keymat_len, true);
    if (rc == 0)
        rc = esp_datapath_install_sa(c->dp, &cfg, err, sizeof(err));
    secure_wipe(&cfg, sizeof(cfg));
    if (rc < 0) {
        LOG_ERR(c->log, "conn", "installing the CHILD SA failed: %s", err);
        ike_sa_close(c->sa);
        return;
    }
    c->spi_in = r->spi_in;
    esp_tunnel_net net;
    memset(&net, 0, sizeof(net));
    net.has_vip = r->has_vip;
    net.vip.family = AF_INET;
    memcpy(net.vip.addr, r->vip, 4);
    net.vip.prefix_len = 32;
    for (size_t i = 0; i < r->n_remote_ts && i < ESP_MAX_TS; i++) {
        net.remote_ts[i].family = r->remote_ts[i].family;
        memcpy(net.remote_ts[i].addr, r->remote_ts[i].addr, 16);
        net.remote_ts[i].prefix_len = r->remote_ts[i].prefix_len;
        net.n_remote_ts++;
    }
    for (size_t i = 0; i < r->n_dns && i < ESP_MAX_DNS; i++) {
        net.dns[i].family = AF_INET;
        memcpy(net.dns[i].addr, r->dns[i], 4);
        net.n_dns++;
    }
    net.encr_id = r->encr_id;
    net.integ_id = r->integ_id;
    if (esp_datapath_set_network(c->dp, &net, err, sizeof(err)) < 0) {
        LOG_ERR(c->log, "conn", "configuring the tunnel failed: %s", err);
        ike_sa_close(c->sa);
        return;
    }
    esp_datapath_set_keepalive(c->dp, c->prof->ike.nat_keepalive_s);
    if (r->has_vip)
        inet_ntop(AF_INET, r->vip, c->vip, sizeof(c->vip));
    ike_sa_describe(c->sa, c->ike_alg, sizeof(c->ike_alg), c->esp_alg, sizeof(c->esp_alg));
    c->connected_since = time(NULL);
    c->failures = 0;
    set_state(c, M2MVPN_STATE_CONNECTED, 0, NULL);
    core_timer_arm(c->loop, &c->refresh_timer, STATUS_REFRESH_MS);
}

static void on_down(void *arg, int err, const char *detail)
{
    conn *c = arg;
    drop_child(c);
    retire_sa(c);
    close_socket(c);
    core_timer_cancel(c->loop, &c->refresh_timer);
    if (err == M2MVPN_E_AUTH_LOCAL || err == M2MVPN_E_AUTH_PEER)
        if (c->hooks.on_event)
            c->hooks.on_event(c->hooks.arg, M2MVPN_EVENT_AUTH_FAILED, err, detail);
    if (!c->want_up || err == 0) {
        c->want_up = false;
        drop_network_unless_kill_switch(c);
        set_state(c, M2MVPN_STATE_IDLE, err, detail);
        return;
    }
    schedule_retry(c, err, detail);
}

static int resolve(conn *c, char *err, size_t err_len)
{
    const profile_gateway *g = &c->prof->gateways[c->gw_index % c->prof->n_gateways];
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_DGRAM };
    struct addrinfo *res = NULL;
    char port[8];
    snprintf(port, sizeof(port), "%u", g->port);
    int e = getaddrinfo(g->host, port, &hints, &res);
    if (e != 0 || !res) {
        snprintf(err, err_len, "cannot resolve gateway %s: %s", g->host, gai_strerror(e));
        return M2MVPN_E_NETWORK;
    }
    memcpy(&c->gw, res->ai_addr, res->ai_addrlen);
    c->gw_len = res->ai_addrlen;
    freeaddrinfo(res);
    snprintf(c->gw_text, sizeof(c->gw_text), "%s:%u", g->host, g->port);
    return 0;
}

static int open_socket(conn *c, struct sockaddr_storage *local, socklen_t *local_len, char *err, size_t err_len)
{
    close_socket(c);
    c->sock500 = socket(c->gw.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->sock500 < 0 || connect(c->sock500, (struct sockaddr *)&c->gw, c->gw_len) < 0) {
        snprintf(err, err_len, "cannot reach %s: %s", c->gw_text, strerror(errno));
        close_socket(c);
        return M2MVPN_E_NETWORK;
    }
    *local_len = sizeof(*local);
    getsockname(c->sock500, (struct sockaddr *)local, local_len);
    core_io_add(c->loop, &c->io500, c->sock500, EPOLLIN, on_sock500, c);
    return 0;
}

static int ensure_datapath(conn *c, char *err, size_t err_len)
{
    if (c->dp)
        return 0;
    esp_datapath_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    struct sockaddr_in *any = (struct sockaddr_in *)&cfg.local;
    any->sin_family = AF_INET;
    any->sin_port = htons(ESP_UDP_PORT);
    cfg.local_len = sizeof(*any);
    snprintf(cfg.tun_name, sizeof(cfg.tun_name), "%s", c->prof->tunnel.tun_name ? c->prof->tunnel.tun_name : "m2m0");
    cfg.mtu = c->prof->tunnel.mtu;
    cfg.kill_switch = c->prof->tunnel.kill_switch;
    cfg.configure_network = true;
    cfg.threads = true;
    int r = esp_datapath_new(&cfg, &c->dp, err, err_len);
    if (r < 0)
        return r;
    esp_datapath_callbacks cbs = { .on_ike_packet = on_ike_packet, .on_rekey = on_rekey };
    r = esp_datapath_attach(c->dp, c->loop, &cbs, c);
    /* The workers also read the shared UDP/4500 socket, where IKE continues
     * after IKE_SA_INIT: they run from the start. */
    if (r == 0 && (r = esp_datapath_start(c->dp)) == 0)
        c->dp_started = true;
    if (r < 0)
        snprintf(err, err_len, "cannot start the ESP datapath (%s)", m2mvpn_strerror(r));
    return r;
}

static int ensure_credentials(conn *c, char *err, size_t err_len)
{
    const profile *p = c->prof;
    if (!c->trust) {
        int r = pki_trust_new(&c->trust);
        for (size_t i = 0; r == 0 && i < p->n_ca; i++)
            r = pki_trust_add_file(c->trust, p->ca[i], err, err_len);
        if (r < 0) {
            pki_trust_free(c->trust);
            c->trust = NULL;
            return r;
        }
    }
    if (p->auth != PROFILE_AUTH_CERT || c->cred)
        return 0;
    if (p->cert.source != PROFILE_CERT_FILE) {
        snprintf(err, err_len, "auth.cert.source \"%s\" is not supported by this build yet",
                 profile_cert_source_name(p->cert.source));
        return M2MVPN_E_NOTSUPP;
    }
    const char *pin = p->cert.pin;
    return cred_file_open(p->cert.file, p->cert.key, pin, pin ? strlen(pin) : 0, &c->cred, err, err_len);
}

static void attempt(conn *c)
{
    char err[512] = "";
    ike_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    int r = resolve(c, err, sizeof(err));
    if (r == 0)
        r = ensure_datapath(c, err, sizeof(err));
    if (r == 0)
        r = ensure_credentials(c, err, sizeof(err));
    if (r == 0 && c->cred && cred_pin_needed(c->cred)) {
        c->pin_wait = true;
        LOG_INFO(c->log, "conn", "waiting for the PIN of %s", c->prof->cert.file);
        if (c->hooks.on_event)
            c->hooks.on_event(c->hooks.arg, M2MVPN_EVENT_PIN_REQUIRED, M2MVPN_E_PIN, c->prof->cert.file);
        return;
    }
    if (r == 0)
        r = open_socket(c, &cfg.local, &cfg.local_len, err, sizeof(err));
    if (r == 0) {
        cfg.prof = c->prof;
        memcpy(&cfg.remote, &c->gw, c->gw_len);
        cfg.remote_len = c->gw_len;
        cfg.cred = c->cred;
        cfg.trust = c->trust;
        ike_hooks hooks = { c, ike_send, on_established, on_down };
        r = ike_sa_new(c->loop, c->log, &cfg, &hooks, &c->sa, err, sizeof(err));
    }
    if (r < 0) {
        on_down(c, r, err);
        return;
    }
    LOG_INFO(c->log, "conn", "connecting to %s (profile %s)", c->gw_text, c->prof->name);
    ike_sa_start(c->sa); /* failures arrive through on_down */
}

static void retry_now(void *arg)
{
    conn *c = arg;
    if (c->want_up && !c->sa)
        attempt(c);
}

static void schedule_retry(conn *c, int err, const char *detail)
{
    bool always_on = c->prof && c->prof->mode == PROFILE_MODE_ALWAYS_ON;
    if (!always_on) {
        c->want_up = false;
        drop_network_unless_kill_switch(c);
        set_state(c, M2MVPN_STATE_IDLE, err, detail);
        return;
    }
    /* Unreachable gateways: the next one in the list (failover). */
    if (err == M2MVPN_E_TIMEOUT || err == M2MVPN_E_NETWORK)
        c->gw_index = (c->gw_index + 1) % c->prof->n_gateways;
    uint64_t delay = BACKOFF_FIRST_MS;
    for (unsigned i = 0; i < c->failures && delay < BACKOFF_MAX_MS; i++)
        delay *= 2;
    if (delay > BACKOFF_MAX_MS)
        delay = BACKOFF_MAX_MS;
    c->failures++;
    LOG_INFO(c->log, "conn", "reconnecting in %llu ms", (unsigned long long)delay);
    set_state(c, M2MVPN_STATE_RECONNECTING, err, detail);
    core_timer_arm(c->loop, &c->reconnect_timer, delay);
}

/* ---------------------------------------------------------- control */

int conn_new(core_loop *loop, core_log *log, const conn_hooks *hooks, conn **ret)
{
    conn *c = calloc(1, sizeof(*c));
    if (!c)
        return M2MVPN_E_NOMEM;
    c->loop = loop;
    c->log = log;
    c->hooks = *hooks;
    c->sock500 = -1;
    c->state = M2MVPN_STATE_IDLE;
    core_timer_init(&c->reconnect_timer, retry_now, c);
    core_timer_init(&c->reap_timer, reap, c);
    core_timer_init(&c->refresh_timer, refresh, c);
    *ret = c;
    return 0;
}

static void release_profile(conn *c, bool remove_network)
{
    c->want_up = false; /* a closing SA must not schedule a reconnect */
    core_timer_cancel(c->loop, &c->reconnect_timer);
    core_timer_cancel(c->loop, &c->refresh_timer);
    if (c->sa) {
        ike_sa_close(c->sa); /* best effort Delete; no waiting here */
        retire_sa(c);
    }
    drop_child(c);
    close_socket(c);
    if (c->dp) {
        if (remove_network)
            esp_datapath_teardown(c->dp, true);
        esp_datapath_free(c->dp);
        c->dp = NULL;
        c->dp_started = false;
    }
    cred_free(c->cred);
    c->cred = NULL;
    pki_trust_free(c->trust);
    c->trust = NULL;
    c->pin_wait = false;
    profile_set_free(c->set); /* drops our reference */
    c->set = NULL;
    c->prof = NULL;
}

void conn_free(conn *c)
{
    if (!c)
        return;
    c->hooks.on_state = NULL;
    c->hooks.on_event = NULL;
    release_profile(c, false);
    core_timer_cancel(c->loop, &c->reap_timer);
    ike_sa_free(c->dead_sa);
    free(c);
}

void conn_set_profile(conn *c, profile_set *set, const profile *p)
{
    if (c->prof == p)
        return;
    bool was_up = c->want_up;
    release_profile(c, c->prof && (!p || !c->prof->tunnel.tun_name || !p->tunnel.tun_name ||
                                   strcmp(c->prof->tunnel.tun_name, p->tunnel.tun_name) != 0));
    c->set = profile_set_ref(set);
    c->prof = p;
    c->gw_index = 0;
    c->failures = 0;
    c->want_up = was_up || p->mode == PROFILE_MODE_ALWAYS_ON;
    if (c->want_up) {
        set_state(c, M2MVPN_STATE_CONNECTING, 0, NULL);
        attempt(c);
    } else if (c->state != M2MVPN_STATE_IDLE) {
        set_state(c, M2MVPN_STATE_IDLE, 0, NULL);
    }
}

void conn_connect(conn *c)
{
    if (!c->prof)
        return;
    c->want_up = true;
    if (c->sa || c->pin_wait)
        return; /* already on its way */
    core_timer_cancel(c->loop, &c->reconnect_timer);
    c->failures = 0;
    set_state(c, M2MVPN_STATE_CONNECTING, 0, NULL);
    attempt(c);
}

void conn_disconnect(conn *c)
{
    c->want_up = false;
    c->pin_wait = false;
    core_timer_cancel(c->loop, &c->reconnect_timer);
    if (c->sa) {
        set_state(c, M2MVPN_STATE_DISCONNECTING, 0, NULL);
        ike_sa_close(c->sa); /* on_down follows */
        return;
    }
    if (c->state != M2MVPN_STATE_IDLE)
        set_state(c, M2MVPN_STATE_IDLE, 0, NULL);
}

void conn_enter_pin(conn *c, const char *pin, size_t len)
{
    if (!c->pin_wait || !c->cred) {
        LOG_WARN(c->log, "conn", "a PIN was entered but none is needed now");
        return;
    }
    char err[256];
    int r = cred_set_pin(c->cred, pin, len, err, sizeof(err));
    c->pin_wait = false;
    if (r < 0) {
        /* Never retried: a smartcard or TPM would lock. */
        c->want_up = false;
        set_state(c, M2MVPN_STATE_IDLE, r, err);
        return;
    }
    attempt(c);
}

void conn_remove_profile(conn *c)
{
    c->want_up = false;
    release_profile(c, true);
    if (c->state != M2MVPN_STATE_IDLE)
        set_state(c, M2MVPN_STATE_IDLE, 0, NULL);
}

void conn_fill_status(conn *c, m2mvpn_status *st)
{
    snprintf(st->gateway, sizeof(st->gateway), "%s", c->sa || c->spi_in ? c->gw_text : "");
    snprintf(st->virtual_ip, sizeof(st->virtual_ip), "%s", c->vip);
    snprintf(st->ike_algorithms, sizeof(st->ike_algorithms), "%s", c->spi_in ? c->ike_alg : "");
    snprintf(st->esp_algorithms, sizeof(st->esp_algorithms), "%s", c->spi_in ? c->esp_alg : "");
    st->connected_since = c->connected_since;
    if (c->dp) {
        esp_datapath_counters k;
        esp_datapath_get_counters(c->dp, &k);
        st->bytes_in = k.total.bytes_in;
        st->bytes_out = k.total.bytes_out;
        st->packets_in = k.total.packets_in;
        st->packets_out = k.total.packets_out;
        uint64_t dropped = 0;
        for (int i = 0; i < ESP_DROP__COUNT; i++)
            dropped += k.total.dropped[i];
        st->packets_dropped = dropped;
    }
}
