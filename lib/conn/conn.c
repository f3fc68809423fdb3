/* SPDX-License-Identifier: Apache-2.0 */
#include "conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "core/secmem.h"
#include "cred/cred.h"
#include "crypto/crypto.h"
#include "crypto/pki.h"
#include "esp/esp.h"
#include "dns_hook.h"
#include "ike/ike.h"

#define BACKOFF_FIRST_MS 1000
#define BACKOFF_MAX_MS 60000
#define STATUS_REFRESH_MS 1000
/* Happy Eyeballs (RFC 8305 §5, "Connection Attempt Delay"): how long the
 * first address family's IKE_SA_INIT goes unanswered before the other
 * family's starts as well. */
#define RACE_DELAY_MS 250

/* The gateway's address of the other family, tried while the first one's
 * IKE_SA_INIT is not yet answered. Whichever gets a valid answer first goes
 * on (to IKE_AUTH); the other is dropped before it sends anything more. */
typedef struct conn_race {
    conn *c;
    ike_sa *sa;                   /* NULL: none running */
    ike_sa *dead;                 /* freed from the reap timer */
    int sock;                     /* its port-500 socket */
    core_io io;
    struct sockaddr_storage gw;
    socklen_t gw_len;
    bool started;                 /* in this attempt */
    bool promoted;                /* it became the connection's SA (c->sa) */
} conn_race;

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
    core_timer hook_timer;        /* reaps tunnel.dns_hook runs */

    int sock500;
    core_io io500;
    struct sockaddr_storage gw;   /* port 500 */
    socklen_t gw_len;
    char gw_text[64];
    /* The gateway's addresses for this attempt, one per family, the family
     * to try first at [0] (RFC 8305: IPv6, unless the other one answered
     * last time: preferred_family). */
    struct sockaddr_storage cand[2];
    socklen_t cand_len[2];
    size_t n_cand;
    int preferred_family;
    bool init_answered;           /* IKE_SA_INIT answered: the race is decided */
    conn_race race;
    core_timer race_timer;

    esp_datapath *dp;
    bool drop_dp;                 /* release the datapath from the reap timer */
    bool kill_switch_armed;       /* profile routes + blackholes in place */
    uint32_t spi_in;              /* installed CHILD SA, 0 = none */
    uint32_t spi_out;
    cred_provider *cred;
    pki_trust *trust;
    ike_sa *sa;
    ike_sa *dead_sa;
    bool pin_wait;
    /* EAP credentials: from m2mvpn_set_credentials (session_*, preferred) or
     * the profile. A password the gateway refused is not sent again: the
     * engine waits for new credentials (cred_wait) instead of retrying. */
    char *session_user;
    char *session_pass;           /* secure copy */
    size_t session_pass_len;
    bool cred_wait;
    bool eap_refused;             /* the password we have was refused */
    /* The refusal outlives a reload of the same profile (a new profile
     * pointer): kept as HMAC-SHA256 under a random per-handle key over the
     * profile's name, EAP identity and password (never the password itself);
     * dropped when the reloaded profile's password differs or new
     * credentials are set. */
    uint8_t refused_key[32];
    uint8_t refused_fp[32];
    bool refused_fp_set;
    bool reconnect_after_close;   /* we close the SA to start over */
    int close_err;                /* ... and why, if it is an error */
    char close_detail[320];

    dns_hook dns_hook;            /* tunnel.dns_hook runs not yet reaped */
    char underlay[IF_NAMESIZE];   /* interface towards the gateway, found once */
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

/* ---------------------------------------------------------- DNS hook */

/* The profile's tunnel.dns_hook, with the DNS servers the datapath holds. */
static void run_dns_hook(conn *c, bool up)
{
    const char *hook = c->prof ? c->prof->tunnel.dns_hook : NULL;
    if (!hook)
        return;
    esp_prefix servers[ESP_MAX_DNS] = { 0 }; /* zeroed: passed on even when n is 0 */
    size_t n = up && c->dp ? esp_datapath_dns(c->dp, servers, ESP_MAX_DNS) : 0;
    dns_hook_run(&c->dns_hook, c->log, hook, c->prof->tunnel.tun_name, servers, n, up);
    core_timer_arm(c->loop, &c->hook_timer, 500);
}

/* Reap finished hook runs; look again while any is still running. */
static void reap_hook_runs(void *arg)
{
    conn *c = arg;
    if (dns_hook_reap(&c->dns_hook, c->log))
        core_timer_arm(c->loop, &c->hook_timer, 500);
}

static void reap(void *arg)
{
    conn *c = arg;
    ike_sa_free(c->dead_sa);
    c->dead_sa = NULL;
    ike_sa_free(c->race.dead);
    c->race.dead = NULL;
    dns_hook_reap(&c->dns_hook, c->log);
    if (c->drop_dp && c->dp && !c->want_up) {
        esp_datapath_teardown(c->dp, true);
        esp_datapath_free(c->dp);
        c->dp = NULL;
        c->kill_switch_armed = false;
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
    if (c->spi_in)
        run_dns_hook(c, false);
    if (c->dp && c->spi_in) {
        /* Every SA of the IKE SA goes (rekeyed ones not yet retired too). */
        esp_datapath_remove_all_sas(c->dp);
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

/* Close the IKE SA on purpose and, when it is down, start over (if the
 * tunnel is still wanted). err/detail: why, for the status (0: routine). */
static void close_and_reconnect(conn *c, int err, const char *detail)
{
    c->reconnect_after_close = true;
    c->close_err = err;
    snprintf(c->close_detail, sizeof(c->close_detail), "%s", detail ? detail : "");
    ike_sa_close(c->sa); /* on_down follows, maybe right away */
}

/* The CHILD SA nears its end (soft lifetime, bytes, sequence numbers):
 * rekey it (CREATE_CHILD_SA, lib/ike); the result arrives through
 * on_child_rekeyed. Only when that cannot start and the SA no longer sends
 * (a hard reason) is the tunnel built anew. */
static void on_rekey(void *arg, uint32_t spi_in, esp_rekey_reason reason)
{
    conn *c = arg;
    if (!c->sa || spi_in != c->spi_in || c->reconnect_after_close)
        return;
    LOG_INFO(c->log, "conn", "CHILD SA %08x: %s; rekeying", spi_in, esp_rekey_reason_name(reason));
    if (ike_sa_rekey_child(c->sa, spi_in) < 0 && esp_rekey_reason_is_hard(reason))
        close_and_reconnect(c, 0, NULL);
}

static void race_drop(conn *c);
static bool race_take_over(conn *c, int err, ike_fault fault);
static void race_start(void *arg);
static bool eap_credentials(conn *c, ike_config *cfg);

/* A valid IKE_SA_INIT answer came for the address in c->gw (lib/ike always
 * continues on port 4500): the race is decided, the other family's attempt
 * goes, and its family is tried first next time. */
static void init_answered(conn *c)
{
    if (c->init_answered)
        return;
    c->init_answered = true;
    core_timer_cancel(c->loop, &c->race_timer);
    if (c->race.sa && !c->race.promoted)
        LOG_INFO(c->log, "conn", "%s answered first; the other address family's attempt stops",
                 c->gw.ss_family == AF_INET6 ? "IPv6" : "IPv4");
    race_drop(c);
    c->preferred_family = c->gw.ss_family;
}

static int ike_send(void *arg, const uint8_t *msg, size_t len, bool natt)
{
    conn *c = arg;
    if (natt) {
        init_answered(c);
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
static void wait_for_credentials(conn *c, const char *why);
static void forget_session_credentials(conn *c);
static bool profile_eap_fp(const conn *c, const profile *p, uint8_t out[32]);

static void refresh(void *arg)
{
    conn *c = arg;
    dns_hook_reap(&c->dns_hook, c->log);
    if (c->state != M2MVPN_STATE_CONNECTED)
        return;
    set_state(c, M2MVPN_STATE_CONNECTED, 0, NULL); /* same state: status refresh only */
    core_timer_arm(c->loop, &c->refresh_timer, STATUS_REFRESH_MS);
}

/* Every prefix a profile may list gets its route, blackhole and nftables
 * element: the datapath's tables are sized from the profile's limit. */
_Static_assert(ESP_MAX_TS >= PROFILE_MAX_TS, "the datapath must protect every remote_ts");

/* IPv6 switched off on this device (net.ipv6.conf.all.disable_ipv6, or
 * no IPv6 in the kernel): no IPv6 address can be installed. Unknown (the
 * sysctl unreadable while IPv6 may be there) counts as on. */
static bool ipv6_off(void)
{
    FILE *f = fopen("/proc/sys/net/ipv6/conf/all/disable_ipv6", "r");
    if (!f)
        return errno == ENOENT && access("/proc/sys/net/core", F_OK) == 0; /* no IPv6 in the kernel */
    int v = 0;
    bool off = fscanf(f, "%d", &v) == 1 && v == 1;
    fclose(f);
    return off;
}

/* The profile's traffic selectors as the prefixes the TUN routes cover. A
 * full tunnel (/0) stays one prefix: it is the default route of our own
 * routing table, which the rule consults before the main table. More than
 * the datapath can hold is an error, never a prefix silently left out. */
static int profile_to_routes(const profile *p, esp_tunnel_net *net, char *err, size_t err_len)
{
    const profile_ts *ts = p->tunnel.remote_ts;
    size_t n = p->tunnel.n_remote_ts;
    /* The gateways' IKE ports: the nftables layer lets our marked UDP out
     * to 500, 4500 and these only. */
    _Static_assert(ESP_MAX_IKE_PORTS >= PROFILE_MAX_GATEWAYS, "every gateway's port");
    for (size_t i = 0; i < p->n_gateways && i < ESP_MAX_IKE_PORTS; i++)
        net->ike_ports[net->n_ike_ports++] = p->gateways[i].port;
    /* The ::/0 a full IPv4 tunnel implies (profile.h) is always in the
     * nftables set (an interface may get IPv6 later: conf/default, SLAAC);
     * only its route is skipped where the kernel refuses IPv6 routes. A
     * listed IPv6 prefix needs its route (and fails without IPv6). */
    net->ipv6_route_optional = p->tunnel.implied_family == AF_INET6;
    if (n > ESP_MAX_TS) {
        snprintf(err, err_len, "tunnel.remote_ts has %zu prefixes, the datapath protects at most %d",
                 n, ESP_MAX_TS);
        return M2MVPN_E_PROFILE;
    }
    for (size_t i = 0; i < n; i++) {
        esp_prefix *t = &net->remote_ts[i];
        t->family = ts[i].family;
        memcpy(t->addr, ts[i].addr, 16);
        t->prefix_len = ts[i].prefix_len;
    }
    net->n_remote_ts = n;
    return 0;
}

/* The datapath's inbound filter from the negotiated selectors (RFC 4301
 * §5.2): sources in TSr as granted, destinations our virtual IP (the
 * datapath's default with has_vip) or, without one, TSi as granted. */
static void set_inbound_filter(const ike_child_result *r, esp_tunnel_net *net)
{
    for (size_t i = 0; i < r->n_remote_ts && net->n_in_src < ESP_MAX_TS; i++) {
        esp_prefix *t = &net->in_src[net->n_in_src++];
        t->family = r->remote_ts[i].family;
        memcpy(t->addr, r->remote_ts[i].addr, 16);
        t->prefix_len = r->remote_ts[i].prefix_len;
    }
    for (size_t i = 0; !r->has_vip && i < r->n_local_ts && net->n_in_dst < ESP_MAX_TS; i++) {
        esp_prefix *t = &net->in_dst[net->n_in_dst++];
        t->family = r->local_ts[i].family;
        memcpy(t->addr, r->local_ts[i].addr, 16);
        t->prefix_len = r->local_ts[i].prefix_len;
    }
}

/* The datapath's SA for a negotiated CHILD SA. The soft lifetime is jittered
 * (80..90 %) so that both sides rarely rekey at the same moment. */
static int child_sa_config(conn *c, const ike_child_result *r, esp_sa_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->spi_in = r->spi_in;
    cfg->spi_out = r->spi_out;
    cfg->encr_id = r->encr_id;
    cfg->encr_key_bits = r->encr_key_bits;
    cfg->integ_id = r->integ_id;
    cfg->esn = r->esn;
    cfg->replay_window = c->prof->esp.replay_window;
    uint32_t life = c->prof->esp.lifetime_s, jitter = 0;
    if (life / 10 && crypto_random(&jitter, sizeof(jitter)) == 0)
        jitter %= life / 10 + 1;
    cfg->lifetime.hard_seconds = life;
    cfg->lifetime.soft_seconds = life - life / 10 - jitter;
    memcpy(&cfg->peer, &c->gw, c->gw_len);
    cfg->peer_len = c->gw_len;
    if (cfg->peer.ss_family == AF_INET)
        ((struct sockaddr_in *)&cfg->peer)->sin_port = htons(ESP_UDP_PORT);
    else
        ((struct sockaddr_in6 *)&cfg->peer)->sin6_port = htons(ESP_UDP_PORT);
    return esp_keys_from_keymat(cfg, r->keymat, r->keymat_len, true);
}

/* A rekey replaced the CHILD SA old_spi_in (lib/ike): the new one goes into
 * the datapath next to the old one (make-before-break); sending moves to it
 * now (outbound) or once the old one is removed (on_child_deleted). */
static void on_child_rekeyed(void *arg, uint32_t old_spi_in, const ike_child_result *r, bool outbound)
{
    conn *c = arg;
    char err[256] = "";
    esp_sa_config cfg;
    int rc = child_sa_config(c, r, &cfg);
    cfg.inbound_only = !outbound;
    if (rc == 0 && c->dp)
        rc = esp_datapath_install_sa(c->dp, &cfg, err, sizeof(err));
    secure_wipe(&cfg, sizeof(cfg));
    if (rc < 0) {
        char why[320];
        snprintf(why, sizeof(why), "installing the rekeyed CHILD SA failed: %s", err);
        close_and_reconnect(c, rc, why);
        return;
    }
    c->spi_in = r->spi_in;
    c->spi_out = r->spi_out;
    ike_sa_describe(c->sa, c->ike_alg, sizeof(c->ike_alg), c->esp_alg, sizeof(c->esp_alg));
    char what[96];
    snprintf(what, sizeof(what), "CHILD SA %08x replaced by %08x/%08x", old_spi_in, r->spi_in, r->spi_out);
    LOG_INFO(c->log, "conn", "%s", what);
    if (c->hooks.on_event)
        c->hooks.on_event(c->hooks.arg, M2MVPN_EVENT_REKEYED, 0, what);
}

static void on_child_deleted(void *arg, uint32_t spi_in)
{
    conn *c = arg;
    if (c->dp && spi_in != c->spi_in)
        esp_datapath_remove_sa(c->dp, spi_in);
}

static void on_ike_rekeyed(void *arg)
{
    conn *c = arg;
    ike_sa_describe(c->sa, c->ike_alg, sizeof(c->ike_alg), c->esp_alg, sizeof(c->esp_alg));
    if (c->hooks.on_event)
        c->hooks.on_event(c->hooks.arg, M2MVPN_EVENT_REKEYED, 0, "IKE SA rekeyed");
}

static void on_established(void *arg, const ike_child_result *r)
{
    conn *c = arg;
    char err[256] = "";
    esp_sa_config cfg;
    int rc = child_sa_config(c, r, &cfg);
    if (rc == 0)
        rc = esp_datapath_install_sa(c->dp, &cfg, err, sizeof(err));
    secure_wipe(&cfg, sizeof(cfg));
    if (rc < 0) {
        char why[320];
        snprintf(why, sizeof(why), "installing the CHILD SA failed: %s", err);
        close_and_reconnect(c, rc, why);
        return;
    }
    c->spi_in = r->spi_in;
    c->spi_out = r->spi_out;
    esp_tunnel_net net;
    memset(&net, 0, sizeof(net));
    /* The virtual IPs the gateway assigned: IPv4, IPv6 or both. */
    if (r->has_vip) {
        net.has_vip = true;
        net.vip.family = AF_INET;
        memcpy(net.vip.addr, r->vip, 4);
        net.vip.prefix_len = 32;
    }
    bool vip6 = r->has_vip6 && !ipv6_off();
    if (r->has_vip6 && !vip6)
        LOG_WARN(c->log, "conn", "IPv6 is off on this device: the IPv6 virtual IP is not used");
    if (vip6) {
        esp_prefix *v = r->has_vip ? &net.vip2 : &net.vip;
        *(r->has_vip ? &net.has_vip2 : &net.has_vip) = true;
        v->family = AF_INET6;
        memcpy(v->addr, r->vip6, 16);
        /* A host address: the gateway's prefix length would add a prefix
         * route in the main table through the TUN (a /3 pulls in the
         * device's other IPv6); routes come from the selectors alone. */
        v->prefix_len = 128;
    }
    /* Routes for everything the profile protects, not only what the gateway
     * granted (a subset, checked by lib/ike): traffic for the rest goes into
     * the TUN too and is not sent in plaintext. */
    rc = profile_to_routes(c->prof, &net, err, sizeof(err));
    for (size_t i = 0; rc == 0 && i < r->n_dns && net.n_dns < ESP_MAX_DNS; i++) {
        net.dns[net.n_dns].family = AF_INET;
        memcpy(net.dns[net.n_dns++].addr, r->dns[i], 4);
    }
    for (size_t i = 0; rc == 0 && i < r->n_dns6 && net.n_dns < ESP_MAX_DNS; i++) {
        net.dns[net.n_dns].family = AF_INET6;
        memcpy(net.dns[net.n_dns++].addr, r->dns6[i], 16);
    }
    net.encr_id = r->encr_id;
    net.integ_id = r->integ_id;
    set_inbound_filter(r, &net);
    if (rc < 0 || (rc = esp_datapath_set_network(c->dp, &net, err, sizeof(err))) < 0) {
        char why[320];
        snprintf(why, sizeof(why), "configuring the tunnel failed: %s", err);
        close_and_reconnect(c, rc, why);
        return;
    }
    esp_datapath_set_keepalive(c->dp, c->prof->ike.nat_keepalive_s);
    run_dns_hook(c, true);
    /* The status has one virtual IP: IPv4 if assigned, else IPv6. */
    if (r->has_vip)
        inet_ntop(AF_INET, r->vip, c->vip, sizeof(c->vip));
    else if (r->has_vip6)
        inet_ntop(AF_INET6, r->vip6, c->vip, sizeof(c->vip));
    ike_sa_describe(c->sa, c->ike_alg, sizeof(c->ike_alg), c->esp_alg, sizeof(c->esp_alg));
    c->connected_since = time(NULL);
    c->failures = 0;
    set_state(c, M2MVPN_STATE_CONNECTED, 0, NULL);
    core_timer_arm(c->loop, &c->refresh_timer, STATUS_REFRESH_MS);
}

/* Failures on our side that a later attempt cannot fix without someone
 * changing the profile or the device: not retried, even always-on (a wrong
 * PIN above all: smartcards and TPMs lock out, DESIGN.md §8). Only asked for
 * local causes: whatever the gateway answered, or anyone who forged its
 * unauthenticated answer, is retried (the same code, say E_INVAL, can be
 * either, so lib/ike says which). */
static bool retry_helps(int err)
{
    switch (err) {
    case M2MVPN_E_PIN:
    case M2MVPN_E_CERT:
    case M2MVPN_E_NOTSUPP:
    case M2MVPN_E_PROFILE:
    case M2MVPN_E_INVAL:
    case M2MVPN_E_CREDENTIALS:
        return false;
    default:
        return true;
    }
}

static void on_down(void *arg, int err, ike_fault fault, const char *detail)
{
    conn *c = arg;
    /* The first address family failed before any answer: the other one's
     * attempt (Happy Eyeballs) carries on as the connection's. */
    if (race_take_over(c, err, fault))
        return;
    race_drop(c);
    core_timer_cancel(c->loop, &c->race_timer);
    drop_child(c);
    retire_sa(c);
    close_socket(c);
    core_timer_cancel(c->loop, &c->refresh_timer);
    char why[256];
    if (c->reconnect_after_close) {
        /* We closed it ourselves, to start over (or because of close_err). */
        c->reconnect_after_close = false;
        if (c->close_err) {
            err = c->close_err;
            fault = IKE_FAULT_LOCAL; /* our datapath or supervisor */
            snprintf(why, sizeof(why), "%s", c->close_detail);
            detail = why;
        }
        if (c->want_up && err == 0) {
            set_state(c, M2MVPN_STATE_RECONNECTING, 0, "renewing the tunnel");
            core_timer_arm(c->loop, &c->reconnect_timer, 0);
            return;
        }
    }
    if (err == M2MVPN_E_AUTH_LOCAL || err == M2MVPN_E_AUTH_PEER)
        if (c->hooks.on_event)
            c->hooks.on_event(c->hooks.arg, M2MVPN_EVENT_AUTH_FAILED, err, detail);
    if (err == M2MVPN_E_AUTH_LOCAL && fault == IKE_FAULT_LOCAL && c->prof && c->prof->auth == PROFILE_AUTH_EAP) {
        /* The gateway refused our EAP credentials: reported once, never
         * retried with the same password (an account would lock). An
         * always-on profile waits for new credentials. */
        c->eap_refused = true;
        c->refused_fp_set = profile_eap_fp(c, c->prof, c->refused_fp);
        forget_session_credentials(c);
        bool always_on = c->want_up && c->prof->mode == PROFILE_MODE_ALWAYS_ON;
        if (!always_on) {
            c->want_up = false;
            drop_network_unless_kill_switch(c);
        }
        set_state(c, M2MVPN_STATE_IDLE, err, detail);
        if (always_on)
            wait_for_credentials(c, "the gateway refused the credentials");
        return;
    }
    if (!c->want_up || err == 0 || (fault == IKE_FAULT_LOCAL && !retry_helps(err))) {
        c->want_up = false;
        drop_network_unless_kill_switch(c);
        set_state(c, M2MVPN_STATE_IDLE, err, detail);
        return;
    }
    schedule_retry(c, err, detail);
}

/* "host:port", "[v6 literal]:port". */
static void format_gateway(const profile_gateway *g, char *out, size_t len)
{
    struct in6_addr a6;
    bool v6_literal = inet_pton(AF_INET6, g->host, &a6) == 1;
    snprintf(out, len, v6_literal ? "[%s]:%u" : "%s:%u", g->host, g->port);
}

/* The gateway's addresses: a literal, or a name's A and AAAA records. One
 * address per family is kept, the preferred family first (RFC 8305 §4:
 * IPv6, unless IPv4 answered last time); the other is raced against it. */
static int resolve(conn *c, char *err, size_t err_len)
{
    const profile_gateway *g = &c->prof->gateways[c->gw_index % c->prof->n_gateways];
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_DGRAM, .ai_flags = AI_ADDRCONFIG };
    struct addrinfo *res = NULL;
    char port[8];
    snprintf(port, sizeof(port), "%u", g->port);
    int e = getaddrinfo(g->host, port, &hints, &res);
    if (e != 0 || !res) {
        snprintf(err, err_len, "cannot resolve gateway %s: %s", g->host,
                 e == EAI_SYSTEM ? strerror(errno) : gai_strerror(e));
        return M2MVPN_E_NETWORK;
    }
    int first = c->preferred_family ? c->preferred_family : AF_INET6;
    int order[2] = { first, first == AF_INET6 ? AF_INET : AF_INET6 };
    c->n_cand = 0;
    for (size_t k = 0; k < 2; k++)
        for (struct addrinfo *a = res; a; a = a->ai_next)
            if (a->ai_family == order[k] && a->ai_addrlen <= sizeof(c->cand[0])) {
                memset(&c->cand[c->n_cand], 0, sizeof(c->cand[0]));
                memcpy(&c->cand[c->n_cand], a->ai_addr, a->ai_addrlen);
                c->cand_len[c->n_cand++] = a->ai_addrlen;
                break;
            }
    freeaddrinfo(res);
    if (c->n_cand == 0) {
        snprintf(err, err_len, "gateway %s has no IPv4 or IPv6 address", g->host);
        return M2MVPN_E_NETWORK;
    }
    c->gw = c->cand[0];
    c->gw_len = c->cand_len[0];
    format_gateway(g, c->gw_text, sizeof(c->gw_text));
    return 0;
}

static const char *addr_text(const struct sockaddr_storage *ss, char *out, size_t len)
{
    const void *a = ss->ss_family == AF_INET6 ? (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr
                                              : (const void *)&((const struct sockaddr_in *)ss)->sin_addr;
    if (!inet_ntop(ss->ss_family, a, out, (socklen_t)len))
        snprintf(out, len, "?");
    return out;
}

/* Our sockets to the gateway carry the datapath's fwmark: the rule that
 * sends protected prefixes into the tunnel skips them, so they find the way
 * the main table gives even when the gateway lies inside a protected prefix
 * (a full tunnel). Probes of that way carry it too. */
static void mark_socket(const conn *c, int s)
{
    uint32_t mark = esp_tunnel_table(c->prof->tunnel.tun_name);
    setsockopt(s, SOL_SOCKET, SO_MARK, &mark, sizeof(mark));
}

/* Does a socket bound to `ifname` have a route to the gateway? */
static bool reaches_through(const conn *c, const struct sockaddr_storage *gw, socklen_t gw_len,
                            const char *ifname)
{
    int s = socket(gw->ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s >= 0)
        mark_socket(c, s);
    bool ok = s >= 0 &&
              setsockopt(s, SOL_SOCKET, SO_BINDTODEVICE, ifname, (socklen_t)strlen(ifname)) == 0 &&
              connect(s, (const struct sockaddr *)gw, gw_len) == 0;
    if (s >= 0)
        close(s);
    return ok;
}

/* The interface towards the gateway, looked up anew before every attempt
 * (the device may have moved from Ethernet to LTE). IKE and ESP sockets are
 * bound to it (SO_BINDTODEVICE), so that routes into the TUN, a full tunnel
 * above all, cannot catch them. The kernel's own choice counts unless it is
 * the TUN; otherwise the first interface with a route to the gateway. */
static void underlay_for(const conn *c, const struct sockaddr_storage *gw, socklen_t gw_len,
                         char found[IF_NAMESIZE])
{
    const char *tun = c->prof->tunnel.tun_name ? c->prof->tunnel.tun_name : "m2m0";
    found[0] = '\0';
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) < 0)
        return;
    int s = socket(gw->ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s >= 0)
        mark_socket(c, s);
    struct sockaddr_storage local;
    socklen_t len = sizeof(local);
    bool routed = s >= 0 && connect(s, (const struct sockaddr *)gw, gw_len) == 0 &&
                  getsockname(s, (struct sockaddr *)&local, &len) == 0;
    if (s >= 0)
        close(s);
    for (struct ifaddrs *i = ifs; routed && i && !found[0]; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != local.ss_family || strcmp(i->ifa_name, tun) == 0)
            continue;
        bool same = local.ss_family == AF_INET
                        ? ((struct sockaddr_in *)i->ifa_addr)->sin_addr.s_addr ==
                              ((struct sockaddr_in *)&local)->sin_addr.s_addr
                        : memcmp(&((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr,
                                 &((struct sockaddr_in6 *)&local)->sin6_addr, 16) == 0;
        if (same)
            snprintf(found, IF_NAMESIZE, "%s", i->ifa_name);
    }
    for (struct ifaddrs *i = ifs; i && !found[0]; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != gw->ss_family || !(i->ifa_flags & IFF_UP) ||
            (i->ifa_flags & IFF_LOOPBACK) || strcmp(i->ifa_name, tun) == 0)
            continue;
        if (reaches_through(c, gw, gw_len, i->ifa_name))
            snprintf(found, IF_NAMESIZE, "%s", i->ifa_name);
    }
    freeifaddrs(ifs);
}

static void find_underlay(conn *c)
{
    char found[IF_NAMESIZE];
    underlay_for(c, &c->gw, c->gw_len, found);
    if (strcmp(found, c->underlay) != 0) {
        LOG_INFO(c->log, "conn", "gateway %s is reached through %s", c->gw_text, found[0] ? found : "(no interface)");
        snprintf(c->underlay, sizeof(c->underlay), "%s", found);
    }
    /* The datapath's shared UDP socket follows (unbound if none was found). */
    if (c->dp)
        setsockopt(esp_datapath_udp_fd(c->dp), SOL_SOCKET, SO_BINDTODEVICE, c->underlay,
                   (socklen_t)strlen(c->underlay));
}

/* A port-500 socket to `gw`: marked, bound to `ifname` (if any),
 * connected; its local address in *local. Returns the fd or -1 (errno). */
static int ike_socket(const conn *c, const struct sockaddr_storage *gw, socklen_t gw_len,
                      const char *ifname, struct sockaddr_storage *local, socklen_t *local_len)
{
    int s = socket(gw->ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    mark_socket(c, s);
    if (ifname[0])
        setsockopt(s, SOL_SOCKET, SO_BINDTODEVICE, ifname, (socklen_t)strlen(ifname));
    if (connect(s, (const struct sockaddr *)gw, gw_len) < 0) {
        int e = errno;
        close(s);
        errno = e;
        return -1;
    }
    *local_len = sizeof(*local);
    getsockname(s, (struct sockaddr *)local, local_len);
    return s;
}

static int open_socket(conn *c, struct sockaddr_storage *local, socklen_t *local_len, char *err, size_t err_len)
{
    close_socket(c);
    c->sock500 = ike_socket(c, &c->gw, c->gw_len, c->underlay, local, local_len);
    if (c->sock500 < 0) {
        char a[INET6_ADDRSTRLEN];
        snprintf(err, err_len, "cannot reach %s (%s): %s", c->gw_text, addr_text(&c->gw, a, sizeof(a)),
                 strerror(errno));
        return M2MVPN_E_NETWORK;
    }
    core_io_add(c->loop, &c->io500, c->sock500, EPOLLIN, on_sock500, c);
    return 0;
}

/* ------------------------------------------------- Happy Eyeballs race */

static void race_close_socket(conn_race *r, core_loop *loop)
{
    if (r->sock >= 0) {
        core_io_remove(loop, &r->io);
        close(r->sock);
        r->sock = -1;
    }
}

/* Stop the other family's attempt (it may be inside one of its own
 * callbacks: freed from the reap timer). Nothing is sent for it. */
static void race_drop(conn *c)
{
    conn_race *r = &c->race;
    core_timer_cancel(c->loop, &c->race_timer);
    if (r->promoted)
        return; /* it is c->sa now */
    race_close_socket(r, c->loop);
    if (r->sa) {
        if (r->dead)
            ike_sa_free(r->dead);
        r->dead = r->sa;
        r->sa = NULL;
        core_timer_arm(c->loop, &c->reap_timer, 0);
    }
}

/* The other family's attempt becomes the connection's: the first one's SA
 * and socket go, c->gw is its address. */
static void race_promote(conn *c)
{
    conn_race *r = &c->race;
    retire_sa(c);
    close_socket(c);
    c->sa = r->sa;
    r->sa = NULL;
    r->promoted = true;
    c->gw = r->gw;
    c->gw_len = r->gw_len;
    core_io_remove(c->loop, &r->io);
    c->sock500 = r->sock;
    r->sock = -1;
    core_io_add(c->loop, &c->io500, c->sock500, EPOLLIN, on_sock500, c);
    find_underlay(c); /* the shared UDP/4500 socket follows the new path */
}

/* The first family failed without an answer: the other one takes over
 * (started now if its delay had not passed yet). */
static bool race_take_over(conn *c, int err, ike_fault fault)
{
    if (err == 0 || fault != IKE_FAULT_PEER || !c->sa || c->init_answered || !c->want_up ||
        c->reconnect_after_close)
        return false;
    if (!c->race.sa && !c->race.started && c->n_cand > 1) {
        retire_sa(c);
        close_socket(c);
        race_start(c); /* promoted at once; its failure reaches on_down */
        return true;
    }
    if (!c->race.sa || c->race.promoted)
        return false;
    char a[INET6_ADDRSTRLEN];
    LOG_INFO(c->log, "conn", "%s failed; going on with %s", c->gw.ss_family == AF_INET6 ? "IPv6" : "IPv4",
             addr_text(&c->race.gw, a, sizeof(a)));
    race_promote(c);
    return true;
}

static int race_send(void *arg, const uint8_t *msg, size_t len, bool natt)
{
    conn_race *r = arg;
    conn *c = r->c;
    if (!r->promoted && natt) {
        /* Its IKE_SA_INIT was answered first: it wins. */
        char a[INET6_ADDRSTRLEN];
        LOG_INFO(c->log, "conn", "%s (%s) answered first; the other address family's attempt stops",
                 r->gw.ss_family == AF_INET6 ? "IPv6" : "IPv4", addr_text(&r->gw, a, sizeof(a)));
        race_promote(c);
    }
    if (r->promoted)
        return ike_send(c, msg, len, natt);
    return send(r->sock, msg, len, 0) < 0 ? M2MVPN_E_NETWORK : 0;
}

static void race_established(void *arg, const ike_child_result *child)
{
    conn_race *r = arg;
    if (r->promoted)
        on_established(r->c, child);
}

/* Rekeys happen only once established, so only on a promoted attempt. */
static void race_child_rekeyed(void *arg, uint32_t old_spi_in, const ike_child_result *child, bool outbound)
{
    conn_race *r = arg;
    if (r->promoted)
        on_child_rekeyed(r->c, old_spi_in, child, outbound);
}

static void race_child_deleted(void *arg, uint32_t spi_in)
{
    conn_race *r = arg;
    if (r->promoted)
        on_child_deleted(r->c, spi_in);
}

static void race_ike_rekeyed(void *arg)
{
    conn_race *r = arg;
    if (r->promoted)
        on_ike_rekeyed(r->c);
}

static void race_down(void *arg, int err, ike_fault fault, const char *detail)
{
    conn_race *r = arg;
    conn *c = r->c;
    if (r->promoted) {
        on_down(c, err, fault, detail);
        return;
    }
    LOG_INFO(c->log, "conn", "the other address family's attempt ended: %s", detail ? detail : "");
    race_drop(c);
    /* The first one failed already (it would have handed over): nothing
     * is left of this attempt. */
    if (!c->sa)
        on_down(c, err, fault, detail);
}

static void on_race_sock(void *arg, uint32_t events)
{
    conn_race *r = arg;
    (void)events;
    uint8_t buf[ESP_MAX_PACKET];
    for (int i = 0; i < 16 && r->sock >= 0; i++) {
        ssize_t n = recv(r->sock, buf, sizeof(buf), 0);
        if (n < 0)
            return;
        if (r->sa)
            ike_sa_input(r->sa, buf, (size_t)n, false);
    }
}

/* Timer: the first family has no answer yet; the other one starts too. */
static void race_start(void *arg)
{
    conn *c = arg;
    conn_race *r = &c->race;
    if (c->init_answered || r->started || c->n_cand < 2 || !c->want_up)
        return;
    r->started = true;
    r->promoted = false;
    r->c = c;
    r->gw = c->cand[1];
    r->gw_len = c->cand_len[1];
    char ifname[IF_NAMESIZE], a[INET6_ADDRSTRLEN], err[256] = "";
    underlay_for(c, &r->gw, r->gw_len, ifname);
    ike_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    r->sock = ike_socket(c, &r->gw, r->gw_len, ifname, &cfg.local, &cfg.local_len);
    int rc = M2MVPN_E_NETWORK;
    if (r->sock < 0) {
        snprintf(err, sizeof(err), "cannot reach %s (%s): %s", c->gw_text,
                 addr_text(&r->gw, a, sizeof(a)), strerror(errno));
    } else {
        core_io_add(c->loop, &r->io, r->sock, EPOLLIN, on_race_sock, r);
        cfg.prof = c->prof;
        memcpy(&cfg.remote, &r->gw, r->gw_len);
        cfg.remote_len = r->gw_len;
        cfg.cred = c->cred;
        cfg.trust = c->trust;
        if (c->prof->auth == PROFILE_AUTH_EAP)
            eap_credentials(c, &cfg); /* present: the first attempt had them */
        ike_hooks hooks = { r, race_send, race_established, race_down, race_child_rekeyed, race_child_deleted,
                            race_ike_rekeyed };
        rc = ike_sa_new(c->loop, c->log, &cfg, &hooks, &r->sa, err, sizeof(err));
    }
    if (rc < 0) {
        race_drop(c);
        LOG_INFO(c->log, "conn", "no attempt over the other address family: %s", err);
        if (!c->sa)
            on_down(c, rc, IKE_FAULT_PEER, err);
        return;
    }
    LOG_INFO(c->log, "conn", "%s: trying %s as well (Happy Eyeballs)",
             c->sa ? "no answer yet" : "the first address family failed", addr_text(&r->gw, a, sizeof(a)));
    if (!c->sa)
        race_promote(c); /* the first one is gone: this is the attempt now */
    ike_sa_start(r->promoted ? c->sa : r->sa);
}

static int ensure_datapath(conn *c, char *err, size_t err_len)
{
    if (c->dp)
        return 0;
    esp_datapath_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    /* One dual-stack socket ([::]:4500, IPV6_V6ONLY off) for gateways of
     * either family, a gateway list that mixes them, and a Happy Eyeballs
     * race won by either; the datapath falls back to IPv4 on a kernel
     * without IPv6. */
    struct sockaddr_in6 *any = (struct sockaddr_in6 *)&cfg.local;
    any->sin6_family = AF_INET6;
    any->sin6_addr = in6addr_any;
    any->sin6_port = htons(ESP_UDP_PORT);
    cfg.local_len = sizeof(*any);
    snprintf(cfg.tun_name, sizeof(cfg.tun_name), "%s", c->prof->tunnel.tun_name ? c->prof->tunnel.tun_name : "m2m0");
    cfg.mtu = c->prof->tunnel.mtu;
    if (cfg.mtu > ESP_MAX_TUN_MTU) {
        LOG_WARN(c->log, "conn", "tunnel.mtu %u is above what the datapath carries; using %u",
                 (unsigned)cfg.mtu, (unsigned)ESP_MAX_TUN_MTU);
        cfg.mtu = ESP_MAX_TUN_MTU;
    }
    cfg.kill_switch = c->prof->tunnel.kill_switch;
    cfg.configure_network = true;
    cfg.threads = true;
    snprintf(cfg.underlay_ifname, sizeof(cfg.underlay_ifname), "%s", c->underlay);
    int r = esp_datapath_new(&cfg, &c->dp, err, err_len);
    if (r < 0)
        return r;
    esp_datapath_callbacks cbs = { .on_ike_packet = on_ike_packet, .on_rekey = on_rekey };
    r = esp_datapath_attach(c->dp, c->loop, &cbs, c);
    /* The workers also read the shared UDP/4500 socket, where IKE continues
     * after IKE_SA_INIT: they run from the start. */
    if (r == 0)
        r = esp_datapath_start(c->dp);
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
    if (c->cred && cred_lost(c->cred)) {
        /* Token removed or TPM gone: open it again (it may be back). */
        LOG_INFO(c->log, "conn", "credential device went away: opening it again");
        cred_free(c->cred);
        c->cred = NULL;
    }
    if (p->auth != PROFILE_AUTH_CERT || c->cred)
        return 0;
    const char *pin = p->cert.pin;
    size_t pin_len = pin ? strlen(pin) : 0;
    switch (p->cert.source) {
    case PROFILE_CERT_FILE:
        return cred_file_open(p->cert.file, p->cert.key, pin, pin_len, &c->cred, err, err_len);
    case PROFILE_CERT_MACHINE:
        return cred_machine_open(p->cert.file, p->cert.key, p->cert.bind_sources, pin, pin_len, &c->cred,
                                 err, err_len);
    case PROFILE_CERT_PKCS11:
        return cred_pkcs11_open(p->cert.pkcs11_module, p->cert.pkcs11_uri, pin, pin_len, &c->cred,
                                err, err_len);
    case PROFILE_CERT_TPM:
        return cred_tpm_open(p->cert.tpm_key, p->cert.file, p->cert.tpm_tcti, pin, pin_len, &c->cred,
                             err, err_len);
    default:
        snprintf(err, err_len, "auth.cert.source \"%s\" is not supported by this build yet",
                 profile_cert_source_name(p->cert.source));
        return M2MVPN_E_NOTSUPP;
    }
}

/* Kill switch from the moment the profile is in use (DESIGN.md §8: also
 * before the first connect): the TUN with routes for the profile's remote
 * traffic selectors in our table behind the rule, blackholes, the nftables
 * table, and no SA, so protected traffic is dropped, not leaked. */
static int arm_kill_switch(conn *c, char *err, size_t err_len)
{
    esp_tunnel_net net;
    memset(&net, 0, sizeof(net));
    /* No gateway lookup here: routes must be in place even when the
     * gateway's name cannot be resolved yet. */
    int r = ensure_datapath(c, err, err_len);
    if (r == 0)
        r = profile_to_routes(c->prof, &net, err, err_len);
    if (r == 0)
        r = esp_datapath_set_network(c->dp, &net, err, err_len);
    esp_kill_switch_info ks;
    memset(&ks, 0, sizeof(ks));
    if (c->dp)
        esp_datapath_kill_switch_info(c->dp, &ks);
    /* Fail closed: policy routing alone does not hold traffic that a
     * program sends bound to the underlay (SO_BINDTODEVICE, IP_UNICAST_IF,
     * unprivileged): the kernel takes a protected address as on-link there
     * and sends it in plaintext. Only a profile that says so accepts that. */
    if (r == 0 && !ks.nftables && !c->prof->tunnel.kill_switch_routing_only) {
        snprintf(err, err_len, "no nftables table (%s): policy routing alone does not hold "
                 "a socket bound to another interface; set tunnel.kill_switch_routing_only "
                 "to accept that", ks.nft_why);
        r = M2MVPN_E_TUN;
    }
    c->kill_switch_armed = r == 0;
    if (r < 0) {
        LOG_ERR(c->log, "conn", "kill switch for profile %s not in place (no connection attempt "
                "until it is): %s", c->prof->name, err);
        return r;
    }
    if (ks.nftables)
        LOG_INFO(c->log, "conn", "kill switch for profile %s in place: routing table %u "
                 "(rule priority %u), nftables table %s", c->prof->name, ks.table,
                 ks.rule_priority, ks.nft_table);
    else
        LOG_WARN(c->log, "conn", "kill switch for profile %s in place: routing table %u "
                 "(rule priority %u) alone, as tunnel.kill_switch_routing_only allows; no "
                 "nftables table (%s): a program that binds its socket to another interface "
                 "can bypass it", c->prof->name, ks.table, ks.rule_priority, ks.nft_why);
    return 0;
}

void conn_kill_switch_status(conn *c, conn_kill_switch *out)
{
    memset(out, 0, sizeof(*out));
    if (!c->prof || !c->prof->tunnel.kill_switch)
        return;
    out->on = true;
    out->routing_only_allowed = c->prof->tunnel.kill_switch_routing_only;
    if (!c->dp)
        return;
    esp_kill_switch_info ks;
    esp_datapath_kill_switch_info(c->dp, &ks);
    out->routing = ks.routing;
    out->nftables = ks.nftables;
    if (!ks.nftables)
        snprintf(out->nft_why, sizeof(out->nft_why), "%s", ks.nft_why);
}

/* The EAP user and password for this attempt: false if there is no
 * password we may send (none given, or the one we have was refused). */
static bool eap_credentials(conn *c, ike_config *cfg)
{
    if (c->eap_refused)
        return false;
    cfg->eap_identity = c->session_user ? c->session_user : c->prof->eap.identity;
    if (c->session_pass) {
        cfg->eap_password = c->session_pass;
        cfg->eap_password_len = c->session_pass_len;
    } else if (c->prof->eap.password) {
        cfg->eap_password = c->prof->eap.password;
        cfg->eap_password_len = strlen(c->prof->eap.password);
    }
    return cfg->eap_password != NULL;
}

/* The fingerprint of the profile's EAP credentials (see refused_fp). */
static bool profile_eap_fp(const conn *c, const profile *p, uint8_t out[32])
{
    static const uint8_t zero = 0;
    const char *id = p->eap.identity ? p->eap.identity : "";
    const char *pw = p->eap.password ? p->eap.password : "";
    crypto_span parts[] = {
        { (const uint8_t *)p->name, strlen(p->name) }, { &zero, 1 },
        { (const uint8_t *)id, strlen(id) }, { &zero, 1 },
        { (const uint8_t *)pw, strlen(pw) },
    };
    return crypto_prf_oneshot(PRF_HMAC_SHA2_256, c->refused_key, sizeof(c->refused_key), parts,
                              sizeof(parts) / sizeof(parts[0]), out, 32) == 0;
}

/* Ask for credentials (CREDENTIALS_REQUIRED) and wait: no attempt until
 * m2mvpn_set_credentials() answers. */
static void wait_for_credentials(conn *c, const char *why)
{
    char detail[320];
    const char *user = c->session_user ? c->session_user : c->prof->eap.identity;
    snprintf(detail, sizeof(detail), "%s%sEAP password for '%s' (profile %s)", why ? why : "",
             why ? "; waiting for new credentials: " : "", user, c->prof->name);
    c->cred_wait = true;
    LOG_INFO(c->log, "conn", "waiting for the %s", why ? "new credentials" : detail);
    if (c->hooks.on_event)
        c->hooks.on_event(c->hooks.arg, M2MVPN_EVENT_CREDENTIALS_REQUIRED, M2MVPN_E_CREDENTIALS, detail);
}

static void forget_session_credentials(conn *c)
{
    free(c->session_user);
    c->session_user = NULL;
    secure_free(c->session_pass, c->session_pass_len);
    c->session_pass = NULL;
    c->session_pass_len = 0;
}

static void attempt(conn *c)
{
    char err[512] = "";
    ike_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    int r = 0;
    /* No attempt without the kill switch: the tunnel must not come up, or
     * be waited for, while protected traffic could leave in plaintext. */
    if (c->prof->tunnel.kill_switch && !c->kill_switch_armed)
        r = arm_kill_switch(c, err, sizeof(err));
    if (r == 0)
        r = resolve(c, err, sizeof(err));
    if (r == 0)
        r = ensure_datapath(c, err, sizeof(err));
    if (r == 0)
        find_underlay(c);
    if (r == 0)
        r = ensure_credentials(c, err, sizeof(err));
    if (r == 0 && c->cred && cred_pin_needed(c->cred)) {
        char what[160];
        cred_describe(c->cred, what, sizeof(what));
        if (!what[0])
            snprintf(what, sizeof(what), "%s", c->prof->cert.file ? c->prof->cert.file : "");
        c->pin_wait = true;
        LOG_INFO(c->log, "conn", "waiting for the PIN of %s", what);
        if (c->hooks.on_event)
            c->hooks.on_event(c->hooks.arg, M2MVPN_EVENT_PIN_REQUIRED, M2MVPN_E_PIN, what);
        return;
    }
    if (r == 0 && c->prof->auth == PROFILE_AUTH_EAP && !eap_credentials(c, &cfg)) {
        wait_for_credentials(c, NULL);
        return;
    }
    /* A new race: the first address family now, the other one later. */
    race_drop(c);
    c->race.started = c->race.promoted = false;
    c->init_answered = false;
    if (r == 0)
        r = open_socket(c, &cfg.local, &cfg.local_len, err, sizeof(err));
    if (r < 0 && c->n_cand > 1 && c->sock500 < 0) {
        /* No way at all to the first family (no route): the other one. */
        LOG_INFO(c->log, "conn", "%s", err);
        c->gw = c->cand[1];
        c->gw_len = c->cand_len[1];
        c->n_cand = 1;
        find_underlay(c);
        r = open_socket(c, &cfg.local, &cfg.local_len, err, sizeof(err));
    }
    if (r == 0) {
        cfg.prof = c->prof;
        memcpy(&cfg.remote, &c->gw, c->gw_len);
        cfg.remote_len = c->gw_len;
        cfg.cred = c->cred;
        cfg.trust = c->trust;
        ike_hooks hooks = { c, ike_send, on_established, on_down, on_child_rekeyed, on_child_deleted,
                            on_ike_rekeyed };
        r = ike_sa_new(c->loop, c->log, &cfg, &hooks, &c->sa, err, sizeof(err));
    }
    if (r < 0) {
        on_down(c, r, IKE_FAULT_LOCAL, err);
        return;
    }
    char a[INET6_ADDRSTRLEN];
    LOG_INFO(c->log, "conn", "connecting to %s at %s (profile %s)", c->gw_text,
             addr_text(&c->gw, a, sizeof(a)), c->prof->name);
    if (c->n_cand > 1)
        core_timer_arm(c->loop, &c->race_timer, RACE_DELAY_MS);
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
    if (crypto_random(c->refused_key, sizeof(c->refused_key)) < 0) {
        free(c);
        return M2MVPN_E_CRYPTO;
    }
    core_timer_init(&c->reconnect_timer, retry_now, c);
    core_timer_init(&c->reap_timer, reap, c);
    core_timer_init(&c->refresh_timer, refresh, c);
    core_timer_init(&c->hook_timer, reap_hook_runs, c);
    core_timer_init(&c->race_timer, race_start, c);
    c->race.c = c;
    c->race.sock = -1;
    *ret = c;
    return 0;
}

static void release_profile(conn *c, bool remove_network)
{
    c->want_up = false; /* a closing SA must not schedule a reconnect */
    core_timer_cancel(c->loop, &c->reconnect_timer);
    core_timer_cancel(c->loop, &c->refresh_timer);
    race_drop(c);
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
    }
    c->kill_switch_armed = false;
    cred_free(c->cred);
    c->cred = NULL;
    pki_trust_free(c->trust);
    c->trust = NULL;
    c->pin_wait = false;
    c->cred_wait = false;
    c->eap_refused = false;
    c->underlay[0] = '\0';
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
    core_timer_cancel(c->loop, &c->hook_timer);
    dns_hook_reap(&c->dns_hook, c->log); /* what has finished; the rest is left to init */
    ike_sa_free(c->dead_sa);
    ike_sa_free(c->race.dead);
    forget_session_credentials(c);
    secure_wipe(c->refused_key, sizeof(c->refused_key));
    free(c);
}

void conn_set_profile(conn *c, profile_set *set, const profile *p)
{
    if (c->prof == p)
        return;
    bool was_up = c->want_up;
    /* Another TUN name: the old one's network goes. With the kill switch in
     * both, the new one is armed first and the old one removed after, so
     * that a prefix both protect is never without it. */
    bool other_tun = c->prof && (!p || strcmp(c->prof->tunnel.tun_name ? c->prof->tunnel.tun_name : "m2m0",
                                              p->tunnel.tun_name ? p->tunnel.tun_name : "m2m0") != 0);
    bool arm_first = other_tun && p && p->tunnel.kill_switch && c->prof->tunnel.kill_switch;
    char old_tun[IF_NAMESIZE] = "";
    if (arm_first)
        snprintf(old_tun, sizeof(old_tun), "%s", c->prof->tunnel.tun_name ? c->prof->tunnel.tun_name : "m2m0");
    release_profile(c, other_tun && !arm_first);
    c->set = profile_set_ref(set);
    c->prof = p;
    if (c->refused_fp_set && p->auth == PROFILE_AUTH_EAP) {
        /* A reload of a profile whose password was refused: still refused
         * unless its password (or name, identity) changed. */
        uint8_t fp[32];
        c->eap_refused = profile_eap_fp(c, p, fp) && CRYPTO_memcmp(fp, c->refused_fp, sizeof(fp)) == 0;
        if (c->eap_refused)
            LOG_INFO(c->log, "conn", "profile %s: its EAP password was refused before and has not "
                     "changed: not sent again", p->name);
        else
            c->refused_fp_set = false;
    }
    const char *warn[4];
    size_t n_warn = profile_warnings(p, warn, 4);
    for (size_t i = 0; i < n_warn && i < 4; i++)
        LOG_WARN(c->log, "conn", "profile %s: %s", p->name, warn[i]);
    c->gw_index = 0;
    c->failures = 0;
    c->want_up = was_up || p->mode == PROFILE_MODE_ALWAYS_ON;
    if (p->tunnel.kill_switch) {
        char err[512];
        int r = arm_kill_switch(c, err, sizeof(err));
        if (arm_first) {
            char rm_err[256];
            if (esp_network_remove(old_tun, rm_err, sizeof(rm_err)) < 0)
                LOG_WARN(c->log, "conn", "removing the network of TUN %s: %s", old_tun, rm_err);
            /* The old name's table may be the new one's too (hash):
             * refused while it held the old routes; now it is free. */
            if (r < 0)
                r = arm_kill_switch(c, err, sizeof(err));
        }
        if (r < 0 && !c->want_up) {
            set_state(c, M2MVPN_STATE_IDLE, r, err); /* in the status: last_error */
            return;
        }
    }
    if (c->want_up) {
        set_state(c, M2MVPN_STATE_CONNECTING, 0, NULL);
        attempt(c);
    } else {
        set_state(c, M2MVPN_STATE_IDLE, 0, NULL); /* unchanged: the status is refreshed */
    }
}

void conn_connect(conn *c)
{
    if (!c->prof)
        return;
    c->want_up = true;
    if (c->sa && c->state == M2MVPN_STATE_DISCONNECTING) {
        /* Connect after disconnect, before the Delete was confirmed: start
         * over once it is down. */
        c->reconnect_after_close = true;
        c->close_err = 0;
        return;
    }
    if (c->sa || c->pin_wait || c->cred_wait)
        return; /* already on its way, or waiting for the PIN / credentials */
    core_timer_cancel(c->loop, &c->reconnect_timer);
    c->failures = 0;
    set_state(c, M2MVPN_STATE_CONNECTING, 0, NULL);
    attempt(c);
}

void conn_disconnect(conn *c)
{
    c->want_up = false;
    c->pin_wait = false;
    c->cred_wait = false;
    core_timer_cancel(c->loop, &c->reconnect_timer);
    if (c->sa) {
        set_state(c, M2MVPN_STATE_DISCONNECTING, 0, NULL);
        c->reconnect_after_close = false;
        ike_sa_close(c->sa); /* on_down follows */
        return;
    }
    drop_network_unless_kill_switch(c);
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
        drop_network_unless_kill_switch(c);
        set_state(c, M2MVPN_STATE_IDLE, r, err);
        return;
    }
    attempt(c);
}

void conn_set_credentials(conn *c, const char *user, const char *pass, size_t len)
{
    char *u = user ? strdup(user) : NULL;
    char *pw = secure_memdup(pass, len);
    if ((user && !u) || !pw) {
        free(u);
        secure_free(pw, len);
        LOG_ERR(c->log, "conn", "out of memory storing the EAP credentials");
        return;
    }
    forget_session_credentials(c);
    c->session_user = u;
    c->session_pass = pw;
    c->session_pass_len = len;
    c->eap_refused = false;
    c->refused_fp_set = false;
    LOG_INFO(c->log, "conn", "EAP credentials set for '%s'", u ? u : (c->prof ? c->prof->eap.identity : "(profile identity)"));
    if (!c->cred_wait)
        return; /* kept for the next attempt */
    c->cred_wait = false;
    if (c->want_up && c->prof && !c->sa) {
        core_timer_cancel(c->loop, &c->reconnect_timer);
        c->failures = 0;
        set_state(c, M2MVPN_STATE_CONNECTING, 0, NULL);
        attempt(c);
    }
}

const char *conn_profile_name(const conn *c)
{
    return c->prof ? c->prof->name : NULL;
}

void conn_remove_profile(conn *c)
{
    c->want_up = false;
    release_profile(c, true);
    if (c->state != M2MVPN_STATE_IDLE)
        set_state(c, M2MVPN_STATE_IDLE, 0, NULL);
}

/* What holds our key and its certificate (never a PIN). */
static void fill_credential(conn *c, m2mvpn_status *st)
{
    st->credential_source[0] = st->credential[0] = st->cert_subject[0] = '\0';
    st->cert_not_after = 0;
    if (!c->cred)
        return;
    snprintf(st->credential_source, sizeof(st->credential_source), "%s", cred_name(c->cred));
    cred_describe(c->cred, st->credential, sizeof(st->credential));
    if (!st->credential[0] && c->prof && c->prof->cert.file)
        snprintf(st->credential, sizeof(st->credential), "%s", c->prof->cert.file);
    pki_cert *const *chain;
    size_t n;
    char err[128];
    if (cred_chain(c->cred, &chain, &n, err, sizeof(err)) == 0 && n > 0) {
        pki_cert_subject_text(chain[0], st->cert_subject, sizeof(st->cert_subject));
        st->cert_not_after = pki_cert_not_after(chain[0]);
    }
}

void conn_fill_status(conn *c, m2mvpn_status *st)
{
    fill_credential(c, st);
    snprintf(st->gateway, sizeof(st->gateway), "%s", c->sa || c->spi_in ? c->gw_text : "");
    snprintf(st->virtual_ip, sizeof(st->virtual_ip), "%s", c->vip);
    snprintf(st->ike_algorithms, sizeof(st->ike_algorithms), "%s", c->spi_in ? c->ike_alg : "");
    snprintf(st->esp_algorithms, sizeof(st->esp_algorithms), "%s", c->spi_in ? c->esp_alg : "");
    st->connected_since = c->connected_since;
    st->spi_in = c->spi_in;
    st->spi_out = c->spi_in ? c->spi_out : 0;
    memset(st->dns, 0, sizeof(st->dns));
    if (c->dp) {
        esp_prefix dns[4];
        size_t n = c->spi_in ? esp_datapath_dns(c->dp, dns, 4) : 0;
        for (size_t i = 0; i < n; i++)
            inet_ntop(dns[i].family, dns[i].addr, st->dns[i], sizeof(st->dns[i]));
        esp_datapath_counters k;
        esp_datapath_get_counters(c->dp, &k);
        st->dropped_replay = k.total.dropped[ESP_DROP_REPLAY];
        st->dropped_integrity = k.total.dropped[ESP_DROP_INTEGRITY];
        st->dropped_no_sa = k.total.dropped[ESP_DROP_NO_SA];
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
