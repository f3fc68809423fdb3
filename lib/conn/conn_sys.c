/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The real conn_ops: the ESP datapath (TUN, routes, kill switch), the way to
 * the gateway (name, underlay interface, port-500 socket), the credentials
 * and the IKE SA. No policy here: the state machine in conn.c decides.
 */
#include "conn_sys.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "core/error.h"
#include "core/secmem.h"
#include "cred/cred.h"
#include "crypto/crypto.h"
#include "crypto/pki.h"
#include "dns_hook.h"
#include "netwatch.h"

/* Happy Eyeballs (RFC 8305 §5, "Connection Attempt Delay"): how long the
 * first address family's IKE_SA_INIT goes unanswered before the other
 * family's starts as well. */
#define RACE_DELAY_MS 250

typedef struct conn_sys conn_sys;

/* The gateway's address of the other family, tried while the first one's
 * IKE_SA_INIT is not yet answered. Whichever gets a valid answer first goes
 * on (to IKE_AUTH); the other is dropped before it sends anything more. The
 * state machine sees one IKE SA: down is reported only when both failed. */
typedef struct conn_race {
    conn_sys *s;
    ike_sa *sa;                   /* NULL: none running */
    int sock;                     /* its port-500 socket */
    core_io io;
    struct sockaddr_storage gw;
    socklen_t gw_len;
    bool started;                 /* in this attempt */
    bool promoted;                /* it became the attempt's SA (s->sa) */
} conn_race;

struct conn_sys {
    conn *c;
    core_loop *loop;
    core_log *log;
    const profile *prof;          /* of the network / attempt in use */
    core_timer hook_timer;        /* reaps tunnel.dns_hook runs */
    dns_hook dns_hook;

    int sock500;
    core_io io500;
    struct sockaddr_storage gw;   /* port 500 */
    socklen_t gw_len;
    char gw_text[64];
    char underlay[IF_NAMESIZE];   /* interface towards the gateway */
    /* The gateway's addresses for this attempt, one per family, the family
     * to try first at [0] (RFC 8305: IPv6, unless the other one answered
     * last time: preferred_family). */
    struct sockaddr_storage cand[2];
    socklen_t cand_len[2];
    size_t n_cand;
    int preferred_family;
    bool init_answered;           /* IKE_SA_INIT answered: the race is decided */
    bool live;                    /* an attempt runs: not closed on purpose */
    conn_race race;
    core_timer race_timer;
    ike_sa *dead[2];              /* retired inside their callbacks: reaped */
    core_timer reap_timer;

    esp_datapath *dp;
    bool routes_set;              /* the profile's routes are in place */
    bool hold;
    uint32_t spi_in;              /* installed CHILD SA, 0 = none */
    cred_provider *cred;
    pki_trust *trust;
    ike_sa *sa;
    /* Reauthentication (make-before-break, RFC 7296 §2.8.3): `next` is the
     * new IKE SA on its way while `sa` carries the traffic; once its CHILD
     * SA is installed it becomes `sa`, and the one it replaced is `old`
     * until its Delete is done (old_spi_in: its CHILD SA, still accepted
     * inbound meanwhile). The gateway may delete the replaced SA first
     * (uniqueness policy): main_down keeps that until `next` decides. */
    ike_sa *next, *old;
    uint32_t old_spi_in;
    /* A profile switch to another gateway: `next` talks to next_gw (its
     * own port-500 socket) until it carries the tunnel; then next_gw is
     * `gw` and `old` sends its Delete to old_gw. */
    bool next_other_gw;
    struct sockaddr_storage next_gw, old_gw;
    socklen_t next_gw_len, old_gw_len;
    char next_gw_text[64];
    int next_sock500;
    core_io next_io500;
    cred_provider *old_cred;      /* the credential `old` used, if reloaded */
    pki_trust *old_trust;         /* its trust anchors, if another profile's */
    bool has_vip, has_vip6;       /* the tunnel's virtual IPs (asked for again) */
    uint8_t vip[4], vip6[16];
    bool main_down;
    int main_err;
    ike_fault main_fault;
    char main_detail[256];
    /* The EAP credentials the SA borrows (ike_config): our copies, kept
     * until the SA is released. */
    char *eap_user;
    char *eap_pass;               /* secure copy */
    size_t eap_pass_len;
    char ike_alg[96], esp_alg[96];
    /* Roaming: the kernel's address and route events, and the way to the
     * gateway as the kernel last chose it (source address, interface). */
    netwatch *nw;
    netwatch_path path;
    bool path_known;              /* `path` holds the last way found */
    bool watching;                /* an attempt's way is watched (even while no way is found) */
};

static void close_socket(conn_sys *s)
{
    if (s->sock500 >= 0) {
        core_io_remove(s->loop, &s->io500);
        close(s->sock500);
        s->sock500 = -1;
    }
}

/* ---------------------------------------------------------- DNS hook */

static void run_dns_hook(conn_sys *s, bool up)
{
    const char *hook = s->prof ? s->prof->tunnel.dns_hook : NULL;
    if (!hook)
        return;
    esp_prefix servers[ESP_MAX_DNS] = { 0 }; /* zeroed: passed on even when n is 0 */
    size_t n = up && s->dp ? esp_datapath_dns(s->dp, servers, ESP_MAX_DNS) : 0;
    dns_hook_run(&s->dns_hook, s->log, hook, s->prof->tunnel.tun_name, servers, n, up);
    core_timer_arm(s->loop, &s->hook_timer, 500);
}

static void reap_hook_runs(void *arg)
{
    conn_sys *s = arg;
    if (dns_hook_reap(&s->dns_hook, s->log))
        core_timer_arm(s->loop, &s->hook_timer, 500);
}

/* ------------------------------------------------------------- I/O */

/* Which IKE SA a message from the gateway is for: during a reauthentication
 * two share the sockets (their SPIs tell them apart). Port 4500 (the ESP
 * socket, not connected: any sender): lib/ike takes no IKE_SA_INIT answer
 * there. */
static ike_sa *sa_for(conn_sys *s, const uint8_t *msg, size_t len)
{
    if (s->next && ike_sa_owns(s->next, msg, len))
        return s->next;
    if (s->old && ike_sa_owns(s->old, msg, len))
        return s->old;
    return s->sa;
}

/* The same for a port-500 socket (each connected to its gateway): the one
 * to the gateway of a switch carries the new IKE SA's messages alone; the
 * tunnel's carries the current SA's, the replaced one's, and the new one's
 * when it goes to the same gateway (a reauthentication). So nothing from
 * one gateway reaches the other's IKE SA there. */
static ike_sa *sa_for_sock500(conn_sys *s, bool next_socket, const uint8_t *msg, size_t len)
{
    if (next_socket)
        return s->next && s->next_other_gw && ike_sa_owns(s->next, msg, len) ? s->next : NULL;
    if (s->next && !s->next_other_gw && ike_sa_owns(s->next, msg, len))
        return s->next;
    if (s->old && ike_sa_owns(s->old, msg, len))
        return s->old;
    return s->sa;
}

static void read_sock500(conn_sys *s, int fd, bool next_socket)
{
    /* On the heap: on the stack, the IKE processing below it would reach
     * 16 KB deeper, and those pages stay resident (bench/footprint). */
    uint8_t *buf = malloc(ESP_MAX_PACKET);
    if (!buf)
        return;
    for (int i = 0; i < 16; i++) {
        ssize_t n = recv(fd, buf, ESP_MAX_PACKET, 0);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                LOG_DBG(s->log, "conn", "port 500 socket: %s", strerror(errno));
            break;
        }
        ike_sa *sa = sa_for_sock500(s, next_socket, buf, (size_t)n);
        if (sa)
            ike_sa_input(sa, buf, (size_t)n, false);
    }
    free(buf);
}

static void on_sock500(void *arg, uint32_t events)
{
    conn_sys *s = arg;
    (void)events;
    read_sock500(s, s->sock500, false);
}

/* The port-500 socket to the gateway a profile switch goes to. */
static void on_next_sock500(void *arg, uint32_t events)
{
    conn_sys *s = arg;
    (void)events;
    if (s->next_sock500 >= 0)
        read_sock500(s, s->next_sock500, true);
}

static void on_ike_packet(void *arg, const uint8_t *data, size_t len, const struct sockaddr *from,
                          socklen_t from_len)
{
    conn_sys *s = arg;
    ike_sa *sa = sa_for(s, data, len);
    if (sa)
        ike_sa_input_from(sa, data, len, true, from, from_len);
}

static void on_rekey(void *arg, uint32_t spi_in, esp_rekey_reason reason)
{
    conn_sys *s = arg;
    conn_post_rekey(s->c, spi_in, reason);
}

static void on_traffic(void *arg)
{
    conn_sys *s = arg;
    conn_post_traffic(s->c);
}

static void race_drop(conn_sys *s);
static bool race_take_over(conn_sys *s, int err, ike_fault fault);
static void race_start(void *arg);

/* A valid IKE_SA_INIT answer came for the address in s->gw (lib/ike always
 * continues on port 4500): the race is decided, the other family's attempt
 * goes, and its family is tried first next time. */
static void init_answered(conn_sys *s)
{
    if (s->init_answered)
        return;
    s->init_answered = true;
    core_timer_cancel(s->loop, &s->race_timer);
    if (s->race.sa && !s->race.promoted)
        LOG_INFO(s->log, "conn", "%s answered first; the other address family's attempt stops",
                 s->gw.ss_family == AF_INET6 ? "IPv6" : "IPv4");
    race_drop(s);
    s->preferred_family = s->gw.ss_family;
}

static int ike_send(void *arg, const uint8_t *msg, size_t len, bool natt)
{
    conn_sys *s = arg;
    if (natt) {
        init_answered(s);
        struct sockaddr_storage to = s->gw;
        if (to.ss_family == AF_INET)
            ((struct sockaddr_in *)&to)->sin_port = htons(ESP_UDP_PORT);
        else
            ((struct sockaddr_in6 *)&to)->sin6_port = htons(ESP_UDP_PORT);
        return esp_datapath_send_ike(s->dp, msg, len, (struct sockaddr *)&to, s->gw_len);
    }
    return send(s->sock500, msg, len, 0) < 0 ? M2MVPN_E_NETWORK : 0;
}

static void set_port(struct sockaddr_storage *ss, uint16_t port)
{
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons(port);
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
}

/* The new IKE SA of a switch to another gateway talks to that one (until
 * it carries the tunnel: then next_gw is s->gw). */
static int next_send(void *arg, const uint8_t *msg, size_t len, bool natt)
{
    conn_sys *s = arg;
    if (!s->next_other_gw)
        return ike_send(arg, msg, len, natt);
    if (!natt)
        return send(s->next_sock500, msg, len, 0) < 0 ? M2MVPN_E_NETWORK : 0;
    struct sockaddr_storage to = s->next_gw;
    set_port(&to, ESP_UDP_PORT);
    return esp_datapath_send_ike(s->dp, msg, len, (struct sockaddr *)&to, s->next_gw_len);
}

/* The IKE SA a switch to another gateway replaced: its Delete goes to the
 * gateway it was made with (port 4500: it is past IKE_SA_INIT). */
static int old_send(void *arg, const uint8_t *msg, size_t len, bool natt)
{
    conn_sys *s = arg;
    if (!s->old_gw_len)
        return ike_send(arg, msg, len, natt);
    if (!natt || !s->dp)
        return M2MVPN_E_STATE;
    struct sockaddr_storage to = s->old_gw;
    set_port(&to, ESP_UDP_PORT);
    return esp_datapath_send_ike(s->dp, msg, len, (struct sockaddr *)&to, s->old_gw_len);
}

static void ike_established(void *arg, const ike_child_result *r)
{
    conn_sys *s = arg;
    conn_ike_established(s->c, r);
}

static void ike_down(void *arg, int err, ike_fault fault, const char *detail)
{
    conn_sys *s = arg;
    /* The first address family failed before any answer: the other one's
     * attempt (Happy Eyeballs) carries on as the connection's. */
    if (race_take_over(s, err, fault))
        return;
    race_drop(s);
    if (s->next && s->live) {
        /* The gateway ended the SA being replaced (its uniqueness policy, say)
         * while the new one is on its way: that one decides. */
        LOG_INFO(s->log, "conn", "the IKE SA being reauthenticated went down (%s); waiting for the new one",
                 detail ? detail : "closed");
        s->main_down = true;
        s->main_err = err;
        s->main_fault = fault;
        snprintf(s->main_detail, sizeof(s->main_detail), "%s", detail ? detail : "");
        return;
    }
    conn_post_ike_down(s->c, err, fault, detail);
}

/* The soft limit of a lifetime (seconds, bytes or packets; 0 = none):
 * a random point between 80 and 90 % of it, so that both sides rarely rekey
 * at the same moment. */
static uint64_t soft_limit(uint64_t hard)
{
    uint64_t jitter = 0;
    if (hard / 10 && crypto_random(&jitter, sizeof(jitter)) == 0)
        jitter %= hard / 10 + 1;
    return hard - hard / 10 - jitter;
}

/* The datapath's SA for a negotiated CHILD SA, with the profile's lifetimes
 * (the datapath raises the rekey requests, conn_post_rekey). */
static int child_sa_config(conn_sys *s, const profile *p, const ike_child_result *r, esp_sa_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->spi_in = r->spi_in;
    cfg->spi_out = r->spi_out;
    cfg->encr_id = r->encr_id;
    cfg->encr_key_bits = r->encr_key_bits;
    cfg->integ_id = r->integ_id;
    cfg->esn = r->esn;
    cfg->replay_window = p->esp.replay_window;
    cfg->lifetime.hard_seconds = p->esp.lifetime_s;
    cfg->lifetime.soft_seconds = (uint32_t)soft_limit(p->esp.lifetime_s);
    cfg->lifetime.hard_bytes = p->esp.lifetime_bytes;
    cfg->lifetime.soft_bytes = soft_limit(p->esp.lifetime_bytes);
    cfg->lifetime.hard_packets = p->esp.lifetime_packets;
    cfg->lifetime.soft_packets = soft_limit(p->esp.lifetime_packets);
    memcpy(&cfg->peer, &s->gw, s->gw_len);
    cfg->peer_len = s->gw_len;
    if (cfg->peer.ss_family == AF_INET)
        ((struct sockaddr_in *)&cfg->peer)->sin_port = htons(ESP_UDP_PORT);
    else
        ((struct sockaddr_in6 *)&cfg->peer)->sin6_port = htons(ESP_UDP_PORT);
    return esp_keys_from_keymat(cfg, r->keymat, r->keymat_len, true);
}

/* A rekey replaced the CHILD SA old_spi_in (lib/ike): the new one goes into
 * the datapath next to the old one (make-before-break), right here: its
 * keys are valid only during this callback. Sending moves to it now
 * (outbound) or once the old one is removed (ike_child_deleted). */
static void ike_child_rekeyed(void *arg, uint32_t old_spi_in, const ike_child_result *r, bool outbound)
{
    conn_sys *s = arg;
    char why[256] = "", err[320] = "";
    esp_sa_config cfg;
    int rc = child_sa_config(s, s->prof, r, &cfg);
    cfg.inbound_only = !outbound;
    if (rc == 0 && s->dp)
        rc = esp_datapath_install_sa(s->dp, &cfg, why, sizeof(why));
    else if (rc == 0)
        snprintf(why, sizeof(why), "no datapath");
    secure_wipe(&cfg, sizeof(cfg));
    if (rc < 0) {
        snprintf(err, sizeof(err), "installing the rekeyed CHILD SA failed: %s", why);
    } else {
        s->spi_in = r->spi_in;
        ike_sa_describe(s->sa, s->ike_alg, sizeof(s->ike_alg), s->esp_alg, sizeof(s->esp_alg));
    }
    conn_child_rekeyed(s->c, old_spi_in, r->spi_in, r->spi_out, rc, err);
}

static void ike_child_deleted(void *arg, uint32_t spi_in)
{
    conn_sys *s = arg;
    if (s->dp && spi_in != s->spi_in)
        esp_datapath_remove_sa(s->dp, spi_in);
}

static void ike_ike_rekeyed(void *arg)
{
    conn_sys *s = arg;
    ike_sa_describe(s->sa, s->ike_alg, sizeof(s->ike_alg), s->esp_alg, sizeof(s->esp_alg));
    conn_ike_rekeyed(s->c);
}

static int ike_send_to(void *arg, const uint8_t *msg, size_t len, const struct sockaddr *to, socklen_t to_len)
{
    conn_sys *s = arg;
    return s->dp ? esp_datapath_send_ike(s->dp, msg, len, to, to_len) : M2MVPN_E_STATE;
}

static bool same_sockaddr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a, *y = (const struct sockaddr_in *)b;
        return x->sin_addr.s_addr == y->sin_addr.s_addr && x->sin_port == y->sin_port;
    }
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a, *y = (const struct sockaddr_in6 *)b;
    return memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0 && x->sin6_port == y->sin6_port;
}

static int current_path(conn_sys *s, netwatch_path *p, char *err, size_t err_len);
static void find_underlay(conn_sys *s, const profile *p);
static int open_socket(conn_sys *s, char *err, size_t err_len);
static const char *addr_text(const struct sockaddr_storage *ss, char *out, size_t len);

/* The gateway's side moved (MOBIKE): if lib/ike failed over to another of
 * its addresses (an authenticated answer, then the address update), the
 * datapath's peer, our port-500 socket and the path we watch follow. */
static void follow_gateway(conn_sys *s)
{
    struct sockaddr_storage gw;
    socklen_t gw_len;
    ike_sa_peer(s->sa, &gw, &gw_len);
    if (same_sockaddr(&gw, &s->gw))
        return;
    char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN];
    LOG_INFO(s->log, "conn", "gateway %s: moving from %s to its address %s", s->gw_text,
             addr_text(&s->gw, a, sizeof(a)), addr_text(&gw, b, sizeof(b)));
    bool same_family = gw.ss_family == s->gw.ss_family;
    s->gw = gw;
    s->gw_len = gw_len;
    if (same_family && s->sock500 >= 0 && connect(s->sock500, (const struct sockaddr *)&gw, gw_len) < 0)
        LOG_WARN(s->log, "conn", "port 500 socket to %s: %s", b, strerror(errno));
    if (!same_family) {
        /* Another family: the way leaves by another interface maybe (the
         * ESP socket is bound to it), and a port-500 socket of that family
         * (a reauthentication's IKE_SA_INIT leaves from it). The TUN MTU
         * follows the outer header (esp_datapath_set_peer). */
        char e[256];
        if (s->prof)
            find_underlay(s, s->prof);
        if (s->sock500 >= 0 && s->prof && open_socket(s, e, sizeof(e)) < 0)
            LOG_WARN(s->log, "conn", "%s", e);
    }
    struct sockaddr_storage esp = gw;
    if (esp.ss_family == AF_INET)
        ((struct sockaddr_in *)&esp)->sin_port = htons(ESP_UDP_PORT);
    else
        ((struct sockaddr_in6 *)&esp)->sin6_port = htons(ESP_UDP_PORT);
    if (s->dp && s->spi_in) {
        int r = esp_datapath_set_peer(s->dp, s->spi_in, (const struct sockaddr *)&esp, gw_len);
        if (r < 0)
            LOG_WARN(s->log, "conn", "ESP peer %s: %s", b, core_strerror(r));
    }
    /* The way to the new address is the baseline (not a move of ours). A
     * failed lookup keeps watching: the next network event looks again. */
    char err[160];
    netwatch_path now;
    if (!s->watching)
        return;
    if (current_path(s, &now, err, sizeof(err)) == 0) {
        s->path = now;
        s->path_known = true;
    } else {
        LOG_INFO(s->log, "conn", "way to %s not found (%s): looked up again at the next change", b, err);
    }
}

static void ike_addresses_updated(void *arg, int err, bool ours, const char *detail)
{
    conn_sys *s = arg;
    if (err == 0 && s->sa)
        follow_gateway(s);
    conn_post_addresses_updated(s->c, err, ours, detail);
}

/* ------------------------------------------------------------ roaming */

static uint32_t our_mark(const conn_sys *s)
{
    return esp_tunnel_table(s->prof ? s->prof->tunnel.tun_name : NULL);
}

/* Where the kernel sends our marked packets for the gateway now. */
static int current_path(conn_sys *s, netwatch_path *p, char *err, size_t err_len)
{
    return netwatch_route_to(&s->gw, our_mark(s), p, err, err_len);
}

/* An address or route changed somewhere: has our way to the gateway moved
 * (another source address or interface)? Then conn decides (roaming). No
 * way at all: wait for the next change (a new address may come), DPD ends
 * the SA if none does. */
static void on_net_change(void *arg)
{
    conn_sys *s = arg;
    if (!s->prof || !s->watching || s->sock500 < 0)
        return;
    netwatch_path now, was = s->path;
    char err[160];
    int rc = current_path(s, &now, err, sizeof(err));
    netwatch_change ch = netwatch_track(&s->path, &s->path_known, rc == 0, &now);
    if (ch == NETWATCH_LOST) {
        LOG_INFO(s->log, "conn", "way to %s lost (%s): waiting for another", s->gw_text, err);
        /* Not bound to an interface without address any longer: the
         * kernel would send from whatever address it has elsewhere (the
         * virtual IP) and ask the link for the gateway with it. Unbound,
         * with no route, nothing leaves until the next way is there. */
        if (s->underlay[0] && s->dp) {
            s->underlay[0] = '\0';
            setsockopt(esp_datapath_udp_fd(s->dp), SOL_SOCKET, SO_BINDTODEVICE, "", 0);
        }
        return;
    }
    char from[96], to[96], why[224];
    netwatch_path_text(&now, to, sizeof(to));
    if (ch == NETWATCH_FIRST) /* the attempt started without a way: this one is the baseline */
        LOG_INFO(s->log, "conn", "way to %s found: %s", s->gw_text, to);
    if (ch != NETWATCH_MOVED)
        return;
    netwatch_path_text(&was, from, sizeof(from));
    snprintf(why, sizeof(why), "path to %s moved from %s to %s", s->gw_text, from, to);
    LOG_INFO(s->log, "conn", "%s", why);
    conn_post_path_changed(s->c, why);
}

/* Record the way an attempt takes, and watch for changes of it. */
static void watch_path(conn_sys *s)
{
    char err[160];
    if (!s->nw && netwatch_new(s->loop, s->log, on_net_change, s, &s->nw, err, sizeof(err)) < 0)
        LOG_WARN(s->log, "conn", "%s: no roaming", err);
    s->watching = s->nw != NULL;
    s->path_known = current_path(s, &s->path, err, sizeof(err)) == 0;
}

/* Follow the new path: the shared UDP socket to the new interface, then
 * the gateway asked to move the SAs there (MOBIKE). */
static int sys_roam(void *arg, const char *reason)
{
    conn_sys *s = arg;
    if (!s->sa)
        return M2MVPN_E_STATE;
    snprintf(s->underlay, sizeof(s->underlay), "%s", s->path.ifname);
    if (s->dp)
        setsockopt(esp_datapath_udp_fd(s->dp), SOL_SOCKET, SO_BINDTODEVICE, s->underlay,
                   (socklen_t)strlen(s->underlay));
    struct sockaddr_storage local = s->path.src;
    if (local.ss_family == AF_INET)
        ((struct sockaddr_in *)&local)->sin_port = htons(ESP_UDP_PORT);
    else
        ((struct sockaddr_in6 *)&local)->sin6_port = htons(ESP_UDP_PORT);
    return ike_sa_update_addresses(s->sa, &local, s->path.src_len, reason);
}

/* ------------------------------------------------------------ network */

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

static int ensure_datapath(conn_sys *s, const profile *p, char *err, size_t err_len)
{
    if (s->dp)
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
    snprintf(cfg.tun_name, sizeof(cfg.tun_name), "%s", p->tunnel.tun_name ? p->tunnel.tun_name : "m2m0");
    cfg.mtu = p->tunnel.mtu;
    if (cfg.mtu > ESP_MAX_TUN_MTU) {
        LOG_WARN(s->log, "conn", "tunnel.mtu %u is above what the datapath carries; using %u",
                 (unsigned)cfg.mtu, (unsigned)ESP_MAX_TUN_MTU);
        cfg.mtu = ESP_MAX_TUN_MTU;
    }
    cfg.kill_switch = p->tunnel.kill_switch;
    cfg.batch = p->esp.batch;
    cfg.configure_network = true;
    cfg.threads = true;
    snprintf(cfg.underlay_ifname, sizeof(cfg.underlay_ifname), "%s", s->underlay);
    int r = esp_datapath_new(&cfg, &s->dp, err, err_len);
    if (r < 0)
        return r;
    esp_datapath_callbacks cbs = { .on_ike_packet = on_ike_packet, .on_rekey = on_rekey,
                                   .on_traffic = on_traffic };
    r = esp_datapath_attach(s->dp, s->loop, &cbs, s);
    /* The workers also read the shared UDP/4500 socket, where IKE continues
     * after IKE_SA_INIT: they run from the start. */
    if (r == 0)
        r = esp_datapath_start(s->dp);
    if (r < 0)
        snprintf(err, err_len, "cannot start the ESP datapath (%s)", core_strerror(r));
    return r;
}

/* Kill switch from the moment the profile is in use (DESIGN.md §8: also
 * before the first connect), and on-demand: the TUN with routes for the
 * profile's remote traffic selectors in our table behind the rule,
 * blackholes and the nftables table with the kill switch, and no SA, so
 * protected traffic is dropped (or held, on-demand), not leaked. No gateway
 * lookup here: routes must be in place even when its name cannot be
 * resolved yet. */
static int sys_net_arm(void *arg, const profile *p, bool hold, char *err, size_t err_len)
{
    conn_sys *s = arg;
    s->prof = p;
    int r = ensure_datapath(s, p, err, err_len);
    if (r == 0 && !s->routes_set) {
        esp_tunnel_net net;
        memset(&net, 0, sizeof(net));
        r = profile_to_routes(p, &net, err, err_len);
        if (r == 0)
            r = esp_datapath_set_network(s->dp, &net, err, err_len);
        s->routes_set = r == 0;
        if (r == 0 && p->tunnel.kill_switch) {
            esp_kill_switch_info ks;
            esp_datapath_kill_switch_info(s->dp, &ks);
            /* Fail closed: policy routing alone does not hold traffic that
             * a program sends bound to the underlay (SO_BINDTODEVICE,
             * IP_UNICAST_IF, unprivileged): the kernel takes a protected
             * address as on-link there and sends it in plaintext. Only a
             * profile that says so accepts that. */
            if (!ks.nftables && !p->tunnel.kill_switch_routing_only) {
                snprintf(err, err_len, "no nftables table (%s): policy routing alone does not hold "
                         "a socket bound to another interface; set tunnel.kill_switch_routing_only "
                         "to accept that", ks.nft_why);
                s->routes_set = false; /* the routes stay (closed), checked again next time */
                r = M2MVPN_E_TUN;
            } else if (ks.nftables) {
                LOG_INFO(s->log, "conn", "kill switch for profile %s in place: routing table %u "
                         "(rule priority %u), nftables table %s", p->name, ks.table,
                         ks.rule_priority, ks.nft_table);
            } else {
                LOG_WARN(s->log, "conn", "kill switch for profile %s in place: routing table %u "
                         "(rule priority %u) alone, as tunnel.kill_switch_routing_only allows; no "
                         "nftables table (%s): a program that binds its socket to another interface "
                         "can bypass it", p->name, ks.table, ks.rule_priority, ks.nft_why);
            }
        }
    }
    if (r == 0 && hold != s->hold) {
        esp_datapath_hold(s->dp, hold);
        s->hold = hold;
    }
    return r;
}

static void sys_net_release(void *arg, bool remove)
{
    conn_sys *s = arg;
    if (!s->dp)
        return;
    if (remove)
        esp_datapath_teardown(s->dp, true);
    esp_datapath_free(s->dp);
    s->dp = NULL;
    s->routes_set = false;
    s->hold = false;
    s->spi_in = 0;
}

static int sys_net_remove(void *arg, const char *tun_name, char *err, size_t err_len)
{
    (void)arg;
    return esp_network_remove(tun_name, err, err_len);
}

static bool sys_kill_switch_info(void *arg, esp_kill_switch_info *ks)
{
    conn_sys *s = arg;
    if (!s->dp)
        return false;
    esp_datapath_kill_switch_info(s->dp, ks);
    return true;
}

/* ---------------------------------------------------- path to a gateway */

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
static int resolve(conn_sys *s, const profile *p, size_t gw_index, char *err, size_t err_len)
{
    const profile_gateway *g = &p->gateways[gw_index % p->n_gateways];
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_DGRAM, .ai_flags = AI_ADDRCONFIG };
    struct addrinfo *res = NULL;
    char port[8];
    snprintf(port, sizeof(port), "%u", g->port);
    format_gateway(g, s->gw_text, sizeof(s->gw_text));
    int e = getaddrinfo(g->host, port, &hints, &res);
    if (e != 0 || !res) {
        snprintf(err, err_len, "cannot resolve gateway %s: %s", g->host,
                 e == EAI_SYSTEM ? strerror(errno) : gai_strerror(e));
        return M2MVPN_E_NETWORK;
    }
    int first = s->preferred_family ? s->preferred_family : AF_INET6;
    int order[2] = { first, first == AF_INET6 ? AF_INET : AF_INET6 };
    s->n_cand = 0;
    for (size_t k = 0; k < 2; k++)
        for (struct addrinfo *a = res; a; a = a->ai_next)
            if (a->ai_family == order[k] && a->ai_addrlen <= sizeof(s->cand[0])) {
                memset(&s->cand[s->n_cand], 0, sizeof(s->cand[0]));
                memcpy(&s->cand[s->n_cand], a->ai_addr, a->ai_addrlen);
                s->cand_len[s->n_cand++] = a->ai_addrlen;
                break;
            }
    freeaddrinfo(res);
    if (s->n_cand == 0) {
        snprintf(err, err_len, "gateway %s has no IPv4 or IPv6 address", g->host);
        return M2MVPN_E_NETWORK;
    }
    s->gw = s->cand[0];
    s->gw_len = s->cand_len[0];
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
static void mark_socket(const conn_sys *s, int fd)
{
    uint32_t mark = esp_tunnel_table(s->prof->tunnel.tun_name);
    setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark));
}

/* Does a socket bound to `ifname` have a route to the gateway? */
static bool reaches_through(const conn_sys *s, const struct sockaddr_storage *gw, socklen_t gw_len,
                            const char *ifname)
{
    int fd = socket(gw->ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd >= 0)
        mark_socket(s, fd);
    bool ok = fd >= 0 &&
              setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, ifname, (socklen_t)strlen(ifname)) == 0 &&
              connect(fd, (const struct sockaddr *)gw, gw_len) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* The interface towards the gateway, looked up anew before every attempt
 * (the device may have moved from Ethernet to LTE). IKE and ESP sockets are
 * bound to it (SO_BINDTODEVICE), so that routes into the TUN, a full tunnel
 * above all, cannot catch them. The kernel's own choice counts unless it is
 * the TUN; otherwise the first interface with a route to the gateway. */
static void underlay_for(const conn_sys *s, const profile *p, const struct sockaddr_storage *gw,
                         socklen_t gw_len, char found[IF_NAMESIZE])
{
    const char *tun = p->tunnel.tun_name ? p->tunnel.tun_name : "m2m0";
    found[0] = '\0';
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) < 0)
        return;
    int fd = socket(gw->ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd >= 0)
        mark_socket(s, fd);
    struct sockaddr_storage local;
    socklen_t len = sizeof(local);
    bool routed = fd >= 0 && connect(fd, (const struct sockaddr *)gw, gw_len) == 0 &&
                  getsockname(fd, (struct sockaddr *)&local, &len) == 0;
    if (fd >= 0)
        close(fd);
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
        if (reaches_through(s, gw, gw_len, i->ifa_name))
            snprintf(found, IF_NAMESIZE, "%s", i->ifa_name);
    }
    freeifaddrs(ifs);
}

static void find_underlay(conn_sys *s, const profile *p)
{
    char found[IF_NAMESIZE];
    underlay_for(s, p, &s->gw, s->gw_len, found);
    if (strcmp(found, s->underlay) != 0) {
        LOG_INFO(s->log, "conn", "gateway %s is reached through %s", s->gw_text, found[0] ? found : "(no interface)");
        snprintf(s->underlay, sizeof(s->underlay), "%s", found);
    }
    /* The datapath's shared UDP socket follows (unbound if none was found). */
    if (s->dp)
        setsockopt(esp_datapath_udp_fd(s->dp), SOL_SOCKET, SO_BINDTODEVICE, s->underlay,
                   (socklen_t)strlen(s->underlay));
}

/* A port-500 socket to `gw`: marked, bound to `ifname` (if any),
 * connected. Returns the fd or -1 (errno). */
static int ike_socket(const conn_sys *s, const struct sockaddr_storage *gw, socklen_t gw_len,
                      const char *ifname)
{
    int fd = socket(gw->ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    mark_socket(s, fd);
    if (ifname[0])
        setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, ifname, (socklen_t)strlen(ifname));
    if (connect(fd, (const struct sockaddr *)gw, gw_len) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static int open_socket(conn_sys *s, char *err, size_t err_len)
{
    close_socket(s);
    s->sock500 = ike_socket(s, &s->gw, s->gw_len, s->underlay);
    if (s->sock500 < 0) {
        char a[INET6_ADDRSTRLEN];
        snprintf(err, err_len, "cannot reach %s (%s): %s", s->gw_text, addr_text(&s->gw, a, sizeof(a)),
                 strerror(errno));
        return M2MVPN_E_NETWORK;
    }
    core_io_add(s->loop, &s->io500, s->sock500, EPOLLIN, on_sock500, s);
    return 0;
}

static int sys_path_open(void *arg, const profile *p, size_t gw_index, char *gw_text, size_t gw_text_len,
                         char *err, size_t err_len)
{
    conn_sys *s = arg;
    s->prof = p;
    int r = resolve(s, p, gw_index, err, err_len);
    snprintf(gw_text, gw_text_len, "%s", s->gw_text);
    if (r == 0)
        r = ensure_datapath(s, p, err, err_len);
    if (r == 0)
        find_underlay(s, p);
    /* A new race: the first address family now, the other one later. */
    race_drop(s);
    s->race.started = s->race.promoted = false;
    s->init_answered = false;
    bool tried = r == 0;
    if (r == 0)
        r = open_socket(s, err, err_len);
    if (r < 0 && tried && s->n_cand > 1) {
        /* No way at all to the first family (no route): the other one. */
        LOG_INFO(s->log, "conn", "%s", err);
        s->gw = s->cand[1];
        s->gw_len = s->cand_len[1];
        s->n_cand = 1;
        find_underlay(s, p);
        r = open_socket(s, err, err_len);
    }
    if (r == 0)
        watch_path(s);
    return r;
}

/* ------------------------------------------------- Happy Eyeballs race */

/* Free an IKE SA that may be inside one of its own callbacks: later, from
 * the reap timer. */
static void retire(conn_sys *s, ike_sa *sa)
{
    if (!sa)
        return;
    if (s->dead[0] && s->dead[1]) {
        ike_sa_free(s->dead[0]);
        s->dead[0] = NULL;
    }
    s->dead[s->dead[0] ? 1 : 0] = sa;
    core_timer_arm(s->loop, &s->reap_timer, 0);
}

static void reap(void *arg)
{
    conn_sys *s = arg;
    for (int i = 0; i < 2; i++) {
        ike_sa_free(s->dead[i]);
        s->dead[i] = NULL;
    }
}

static void race_close_socket(conn_race *r, core_loop *loop)
{
    if (r->sock >= 0) {
        core_io_remove(loop, &r->io);
        close(r->sock);
        r->sock = -1;
    }
}

/* Stop the other family's attempt. Nothing is sent for it. */
static void race_drop(conn_sys *s)
{
    conn_race *r = &s->race;
    core_timer_cancel(s->loop, &s->race_timer);
    if (r->promoted)
        return; /* it is s->sa now */
    race_close_socket(r, s->loop);
    retire(s, r->sa);
    r->sa = NULL;
}

/* The other family's attempt becomes the connection's: the first one's SA
 * and socket go, s->gw is its address. */
static void race_promote(conn_sys *s)
{
    conn_race *r = &s->race;
    retire(s, s->sa);
    close_socket(s);
    s->sa = r->sa;
    r->sa = NULL;
    r->promoted = true;
    s->gw = r->gw;
    s->gw_len = r->gw_len;
    watch_path(s); /* the other family's way */
    core_io_remove(s->loop, &r->io);
    s->sock500 = r->sock;
    r->sock = -1;
    core_io_add(s->loop, &s->io500, s->sock500, EPOLLIN, on_sock500, s);
    find_underlay(s, s->prof); /* the shared UDP/4500 socket follows the new path */
}

/* The first family failed without an answer: the other one takes over
 * (started now if its delay had not passed yet). */
static bool race_take_over(conn_sys *s, int err, ike_fault fault)
{
    if (err == 0 || fault != IKE_FAULT_PEER || !s->sa || s->init_answered || !s->live)
        return false;
    if (!s->race.sa && !s->race.started && s->n_cand > 1) {
        retire(s, s->sa);
        s->sa = NULL;
        close_socket(s);
        race_start(s); /* promoted at once; its failure reaches ike_down */
        return true;
    }
    if (!s->race.sa || s->race.promoted)
        return false;
    char a[INET6_ADDRSTRLEN];
    LOG_INFO(s->log, "conn", "%s failed; going on with %s", s->gw.ss_family == AF_INET6 ? "IPv6" : "IPv4",
             addr_text(&s->race.gw, a, sizeof(a)));
    race_promote(s);
    return true;
}

/* Once promoted, the race's SA fails over as the main one does. */
static int race_send_to(void *arg, const uint8_t *msg, size_t len, const struct sockaddr *to, socklen_t to_len)
{
    conn_race *r = arg;
    return ike_send_to(r->s, msg, len, to, to_len);
}

static int race_send(void *arg, const uint8_t *msg, size_t len, bool natt)
{
    conn_race *r = arg;
    conn_sys *s = r->s;
    if (!r->promoted && natt) {
        /* Its IKE_SA_INIT was answered first: it wins. */
        char a[INET6_ADDRSTRLEN];
        LOG_INFO(s->log, "conn", "%s (%s) answered first; the other address family's attempt stops",
                 r->gw.ss_family == AF_INET6 ? "IPv6" : "IPv4", addr_text(&r->gw, a, sizeof(a)));
        race_promote(s);
    }
    if (r->promoted)
        return ike_send(s, msg, len, natt);
    return send(r->sock, msg, len, 0) < 0 ? M2MVPN_E_NETWORK : 0;
}

static void race_established(void *arg, const ike_child_result *child)
{
    conn_race *r = arg;
    if (r->promoted)
        ike_established(r->s, child);
}

/* Rekeys happen only once established, so only on a promoted attempt. */
static void race_child_rekeyed(void *arg, uint32_t old_spi_in, const ike_child_result *child, bool outbound)
{
    conn_race *r = arg;
    if (r->promoted)
        ike_child_rekeyed(r->s, old_spi_in, child, outbound);
}

static void race_child_deleted(void *arg, uint32_t spi_in)
{
    conn_race *r = arg;
    if (r->promoted)
        ike_child_deleted(r->s, spi_in);
}

static void race_ike_rekeyed(void *arg)
{
    conn_race *r = arg;
    if (r->promoted)
        ike_ike_rekeyed(r->s);
}

static void race_addresses_updated(void *arg, int err, bool ours, const char *detail)
{
    conn_race *r = arg;
    if (r->promoted)
        ike_addresses_updated(r->s, err, ours, detail);
}

static void race_down(void *arg, int err, ike_fault fault, const char *detail)
{
    conn_race *r = arg;
    conn_sys *s = r->s;
    if (r->promoted) {
        ike_down(s, err, fault, detail);
        return;
    }
    LOG_INFO(s->log, "conn", "the other address family's attempt ended: %s", detail ? detail : "");
    race_drop(s);
    /* The first one failed already (it would have handed over): nothing
     * is left of this attempt. */
    if (!s->sa)
        conn_post_ike_down(s->c, err, fault, detail);
}

static void on_race_sock(void *arg, uint32_t events)
{
    conn_race *r = arg;
    (void)events;
    uint8_t *buf = malloc(ESP_MAX_PACKET); /* on the heap: as in on_sock500 */
    if (!buf)
        return;
    for (int i = 0; i < 16 && r->sock >= 0; i++) {
        ssize_t n = recv(r->sock, buf, ESP_MAX_PACKET, 0);
        if (n < 0)
            break;
        if (r->sa)
            ike_sa_input(r->sa, buf, (size_t)n, false);
    }
    free(buf);
}

/* Timer: the first family has no answer yet; the other one starts too. */
static void race_start(void *arg)
{
    conn_sys *s = arg;
    conn_race *r = &s->race;
    if (s->init_answered || r->started || s->n_cand < 2 || !s->live)
        return;
    r->started = true;
    r->promoted = false;
    r->s = s;
    r->gw = s->cand[1];
    r->gw_len = s->cand_len[1];
    char ifname[IF_NAMESIZE], a[INET6_ADDRSTRLEN], err[256] = "";
    underlay_for(s, s->prof, &r->gw, r->gw_len, ifname);
    ike_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    r->sock = ike_socket(s, &r->gw, r->gw_len, ifname);
    int rc = M2MVPN_E_NETWORK;
    if (r->sock < 0) {
        snprintf(err, sizeof(err), "cannot reach %s (%s): %s", s->gw_text,
                 addr_text(&r->gw, a, sizeof(a)), strerror(errno));
    } else {
        core_io_add(s->loop, &r->io, r->sock, EPOLLIN, on_race_sock, r);
        cfg.local_len = sizeof(cfg.local);
        getsockname(r->sock, (struct sockaddr *)&cfg.local, &cfg.local_len);
        cfg.prof = s->prof;
        memcpy(&cfg.remote, &r->gw, r->gw_len);
        cfg.remote_len = r->gw_len;
        cfg.cred = s->cred;
        cfg.trust = s->trust;
        cfg.eap_identity = s->eap_user; /* the first attempt's, if EAP */
        cfg.eap_password = s->eap_pass;
        cfg.eap_password_len = s->eap_pass_len;
        ike_hooks hooks = { r, race_send, race_established, race_down, race_child_rekeyed, race_child_deleted,
                            race_ike_rekeyed, race_addresses_updated, race_send_to };
        rc = ike_sa_new(s->loop, s->log, &cfg, &hooks, &r->sa, err, sizeof(err));
    }
    if (rc < 0) {
        race_drop(s);
        LOG_INFO(s->log, "conn", "no attempt over the other address family: %s", err);
        if (!s->sa)
            conn_post_ike_down(s->c, rc, IKE_FAULT_PEER, err);
        return;
    }
    LOG_INFO(s->log, "conn", "%s: trying %s as well (Happy Eyeballs)",
             s->sa ? "no answer yet" : "the first address family failed", addr_text(&r->gw, a, sizeof(a)));
    if (!s->sa)
        race_promote(s); /* the first one is gone: this is the attempt now */
    ike_sa_start(r->promoted ? s->sa : r->sa);
}

/* -------------------------------------------------------- credentials */

static int open_credential(conn_sys *s, const profile *p, char *err, size_t err_len)
{
    const char *pin = p->cert.pin;
    size_t pin_len = pin ? strlen(pin) : 0;
    switch (p->cert.source) {
    case PROFILE_CERT_FILE:
        return cred_file_open(p->cert.file, p->cert.key, pin, pin_len, &s->cred, err, err_len);
    case PROFILE_CERT_MACHINE:
        return cred_machine_open(p->cert.file, p->cert.key, p->cert.bind_sources, pin, pin_len, &s->cred,
                                 err, err_len);
    case PROFILE_CERT_PKCS11:
        return cred_pkcs11_open(p->cert.pkcs11_module, p->cert.pkcs11_uri, pin, pin_len, &s->cred,
                                err, err_len);
    case PROFILE_CERT_TPM:
        return cred_tpm_open(p->cert.tpm_key, p->cert.file, p->cert.tpm_tcti, pin, pin_len, &s->cred,
                             err, err_len);
    default:
        snprintf(err, err_len, "auth.cert.source \"%s\" is not supported by this build yet",
                 profile_cert_source_name(p->cert.source));
        return M2MVPN_E_NOTSUPP;
    }
}

static int sys_cred_load(void *arg, const profile *p, bool *pin_needed, char *what, size_t what_len,
                         char *err, size_t err_len)
{
    conn_sys *s = arg;
    *pin_needed = false;
    if (!s->trust) {
        int r = pki_trust_new(&s->trust);
        for (size_t i = 0; r == 0 && i < p->n_ca; i++)
            r = pki_trust_add_file(s->trust, p->ca[i], err, err_len);
        if (r < 0) {
            pki_trust_free(s->trust);
            s->trust = NULL;
            return r;
        }
    }
    if (s->cred && cred_lost(s->cred)) {
        /* Token removed or TPM gone: open it again (it may be back). */
        LOG_INFO(s->log, "conn", "credential device went away: opening it again");
        cred_free(s->cred);
        s->cred = NULL;
    }
    if (p->auth != PROFILE_AUTH_CERT)
        return 0;
    if (!s->cred) {
        int r = open_credential(s, p, err, err_len);
        if (r < 0)
            return r;
    }
    *pin_needed = cred_pin_needed(s->cred);
    if (*pin_needed) {
        cred_describe(s->cred, what, what_len);
        if (!what[0])
            snprintf(what, what_len, "%s", p->cert.file ? p->cert.file : "");
    }
    return 0;
}

static int sys_cred_pin(void *arg, const char *pin, size_t len, char *err, size_t err_len)
{
    conn_sys *s = arg;
    if (!s->cred) {
        snprintf(err, err_len, "no credential waits for a PIN");
        return M2MVPN_E_STATE;
    }
    return cred_set_pin(s->cred, pin, len, err, err_len);
}

static void sys_cred_release(void *arg)
{
    conn_sys *s = arg;
    cred_free(s->cred);
    s->cred = NULL;
    pki_trust_free(s->trust);
    s->trust = NULL;
}

/* ------------------------------------------------------------- IKE SA */

static void forget_eap(conn_sys *s)
{
    free(s->eap_user);
    s->eap_user = NULL;
    secure_free(s->eap_pass, s->eap_pass_len);
    s->eap_pass = NULL;
    s->eap_pass_len = 0;
}

/* The IKE SA settings every SA this connection opens shares: addresses (local: where sock500
   is bound now), profile, credentials and the EAP secrets kept by sys_sa_start. */
static void ike_config_fill(conn_sys *s, const profile *p, ike_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->local_len = sizeof(cfg->local);
    getsockname(s->sock500, (struct sockaddr *)&cfg->local, &cfg->local_len);
    cfg->prof = p;
    memcpy(&cfg->remote, &s->gw, s->gw_len);
    cfg->remote_len = s->gw_len;
    cfg->cred = s->cred;
    cfg->trust = s->trust;
    cfg->eap_identity = s->eap_user;
    cfg->eap_password = s->eap_pass;
    cfg->eap_password_len = s->eap_pass_len;
}

static int sys_sa_start(void *arg, const profile *p, const conn_eap *eap, char *err, size_t err_len)
{
    conn_sys *s = arg;
    forget_eap(s);
    if (eap && ((eap->user && !(s->eap_user = strdup(eap->user))) ||
                (eap->pass && !(s->eap_pass = secure_memdup(eap->pass, eap->pass_len))))) {
        forget_eap(s);
        snprintf(err, err_len, "out of memory");
        return M2MVPN_E_NOMEM;
    }
    if (s->eap_pass)
        s->eap_pass_len = eap->pass_len;
    ike_config cfg;
    ike_config_fill(s, p, &cfg);
    ike_hooks hooks = { s, ike_send, ike_established, ike_down, ike_child_rekeyed, ike_child_deleted,
                        ike_ike_rekeyed, ike_addresses_updated, ike_send_to };
    int r = ike_sa_new(s->loop, s->log, &cfg, &hooks, &s->sa, err, err_len);
    if (r < 0)
        return r;
    s->live = true;
    char a[INET6_ADDRSTRLEN];
    LOG_INFO(s->log, "conn", "connecting to %s at %s (profile %s)", s->gw_text,
             addr_text(&s->gw, a, sizeof(a)), p->name);
    if (s->n_cand > 1)
        core_timer_arm(s->loop, &s->race_timer, RACE_DELAY_MS);
    ike_sa_start(s->sa); /* failures arrive through on_down */
    return 0;
}

static void reauth_drop(conn_sys *s);

static void sys_sa_close(void *arg)
{
    conn_sys *s = arg;
    s->live = false; /* closed on purpose: no Happy Eyeballs take-over */
    race_drop(s);
    reauth_drop(s);
    if (s->main_down) /* already gone: its down comes now */
        conn_post_ike_down(s->c, s->main_err, s->main_fault, s->main_detail);
    else if (s->sa)
        ike_sa_close(s->sa);
}

static void sys_sa_release(void *arg)
{
    conn_sys *s = arg;
    s->live = false;
    race_drop(s);
    reauth_drop(s);
    if (s->dp) /* whatever else was waited for */
        esp_datapath_expect_spi(s->dp, 0);
    ike_sa_free(s->old);
    s->old = NULL;
    s->old_spi_in = 0;
    cred_free(s->old_cred);
    s->old_cred = NULL;
    pki_trust_free(s->old_trust);
    s->old_trust = NULL;
    s->main_down = false;
    ike_sa_free(s->sa);
    s->sa = NULL;
    reap(s); /* not inside any SA's callback here */
    core_timer_cancel(s->loop, &s->reap_timer);
    forget_eap(s);
    close_socket(s);
}

static int sys_child_rekey(void *arg, uint32_t spi_in)
{
    conn_sys *s = arg;
    return s->sa ? ike_sa_rekey_child(s->sa, spi_in) : M2MVPN_E_STATE;
}

static int sys_child_install(void *arg, const profile *p, const ike_child_result *r, char *err, size_t err_len)
{
    conn_sys *s = arg;
    char why[256] = "";
    esp_sa_config cfg;
    int rc = child_sa_config(s, p, r, &cfg);
    if (rc == 0)
        rc = esp_datapath_install_sa(s->dp, &cfg, why, sizeof(why));
    secure_wipe(&cfg, sizeof(cfg));
    if (rc < 0) {
        snprintf(err, err_len, "installing the CHILD SA failed: %s", why);
        return rc;
    }
    s->spi_in = r->spi_in;
    esp_tunnel_net net;
    memset(&net, 0, sizeof(net));
    /* The virtual IPs the gateway assigned: IPv4, IPv6 or both. */
    s->has_vip = r->has_vip;
    s->has_vip6 = r->has_vip6;
    memcpy(s->vip, r->vip, 4);
    memcpy(s->vip6, r->vip6, 16);
    if (r->has_vip) {
        net.has_vip = true;
        net.vip.family = AF_INET;
        memcpy(net.vip.addr, r->vip, 4);
        net.vip.prefix_len = 32;
    }
    bool vip6 = r->has_vip6 && !ipv6_off();
    if (r->has_vip6 && !vip6)
        LOG_WARN(s->log, "conn", "IPv6 is off on this device: the IPv6 virtual IP is not used");
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
    rc = profile_to_routes(p, &net, why, sizeof(why));
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
    if (rc < 0 || (rc = esp_datapath_set_network(s->dp, &net, why, sizeof(why))) < 0) {
        snprintf(err, err_len, "configuring the tunnel failed: %s", why);
        return rc;
    }
    s->routes_set = true;
    esp_datapath_set_keepalive(s->dp, p->ike.nat_keepalive_s);
    run_dns_hook(s, true);
    if (s->sa)
        ike_sa_describe(s->sa, s->ike_alg, sizeof(s->ike_alg), s->esp_alg, sizeof(s->esp_alg));
    return 0;
}

static void sys_child_remove(void *arg, uint32_t spi_in)
{
    conn_sys *s = arg;
    if (!spi_in)
        return;
    run_dns_hook(s, false);
    if (s->dp) /* every SA of the IKE SA goes (rekeyed ones not yet retired too) */
        esp_datapath_remove_all_sas(s->dp);
    s->spi_in = 0;
}

/* ------------------------------------------------------- reauthentication */

/* The IKE SA a reauthentication replaced is gone (its Delete answered, or
 * the gateway deleted it): its CHILD SA leaves the datapath. */
static void old_gone(conn_sys *s)
{
    if (s->dp && s->old_spi_in && s->old_spi_in != s->spi_in)
        esp_datapath_remove_sa(s->dp, s->old_spi_in);
    s->old_spi_in = 0;
    s->old_gw_len = 0;
    retire(s, s->old); /* maybe inside its callback: freed from the loop */
    s->old = NULL;
    cred_free(s->old_cred);
    s->old_cred = NULL;
    pki_trust_free(s->old_trust);
    s->old_trust = NULL;
}

static void old_down(void *arg, int err, ike_fault fault, const char *detail)
{
    conn_sys *s = arg;
    (void)err;
    (void)fault;
    LOG_INFO(s->log, "conn", "the replaced IKE SA is deleted (%s)", detail && *detail ? detail : "done");
    old_gone(s);
}

static void old_child_deleted(void *arg, uint32_t spi_in)
{
    conn_sys *s = arg;
    if (s->dp && spi_in != s->spi_in && spi_in != s->old_spi_in)
        esp_datapath_remove_sa(s->dp, spi_in);
}

/* A reauthentication that did not replace the SA: back to the credential
 * the current SA used (if it was read anew). */
static void cred_back(conn_sys *s)
{
    if (s->old_trust) {
        pki_trust_free(s->trust);
        s->trust = s->old_trust;
        s->old_trust = NULL;
    }
    if (!s->old_cred)
        return;
    cred_free(s->cred);
    s->cred = s->old_cred;
    s->old_cred = NULL;
}

static void next_established(void *arg, const ike_child_result *r)
{
    conn_sys *s = arg;
    conn_reauth_established(s->c, r);
}

/* The new IKE SA failed before it carried traffic: the current one goes
 * on (unless the gateway ended it meanwhile: then that is the news). */
static void next_down(void *arg, int err, ike_fault fault, const char *detail)
{
    conn_sys *s = arg;
    reauth_drop(s);
    if (s->main_down) {
        s->main_down = false;
        conn_post_ike_down(s->c, s->main_err, s->main_fault, s->main_detail);
        return;
    }
    conn_post_reauth_failed(s->c, err ? err : M2MVPN_E_STATE, fault, detail);
}

static void next_gateway_close(conn_sys *s)
{
    if (s->next_sock500 >= 0) {
        core_io_remove(s->loop, &s->next_io500);
        close(s->next_sock500);
        s->next_sock500 = -1;
    }
    s->next_other_gw = false;
}

/* Stop a reauthentication under way (nothing more is sent for it). */
static void reauth_drop(conn_sys *s)
{
    next_gateway_close(s);
    if (!s->next)
        return;
    if (s->dp)
        esp_datapath_expect_spi(s->dp, 0);
    retire(s, s->next);
    s->next = NULL;
    cred_back(s);
}

/* The same IP address (ports aside). */
static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET)
        return memcmp(&((const struct sockaddr_in *)a)->sin_addr, &((const struct sockaddr_in *)b)->sin_addr,
                      4) == 0;
    if (a->ss_family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                      &((const struct sockaddr_in6 *)b)->sin6_addr, 16) == 0;
    return false;
}

/* conn drops the reauthentication (our path moved under it). */
static void sys_reauth_abort(void *arg)
{
    conn_sys *s = arg;
    if (s->next)
        LOG_INFO(s->log, "conn", "the new IKE SA of the reauthentication is dropped (made on the old path)");
    reauth_drop(s);
    if (s->main_down) { /* the gateway ended the old SA meanwhile: that is the news */
        s->main_down = false;
        conn_post_ike_down(s->c, s->main_err, s->main_fault, s->main_detail);
    }
}

/* A profile switch to another gateway (the new profile's first): its
 * address (of the family in use, if it has one), and its own port-500
 * socket on the interface the tunnel uses (the ESP socket, shared by both
 * IKE SAs, is bound to it: a gateway reached through another interface is
 * refused, the switch is then break-before-make). The kill switch lets our
 * marked IKE and ESP out to the gateways' ports whatever the address: a
 * port it does not let out yet is refused likewise. Nothing to do for the
 * same gateway (next_other_gw stays false). */
static int next_gateway_open(conn_sys *s, const profile *p, char *err, size_t err_len)
{
    const profile_gateway *g = &p->gateways[0];
    char text[64];
    format_gateway(g, text, sizeof(text));
    next_gateway_close(s);
    if (p == s->prof || strcmp(text, s->gw_text) == 0)
        return 0;
    bool port_open = g->port == 500 || g->port == ESP_UDP_PORT || !s->prof->tunnel.kill_switch;
    for (size_t i = 0; !port_open && i < s->prof->n_gateways; i++)
        port_open = s->prof->gateways[i].port == g->port;
    if (!port_open) {
        snprintf(err, err_len, "another gateway on port %u, which the kill switch does not let out yet",
                 (unsigned)g->port);
        return M2MVPN_E_STATE;
    }
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_DGRAM, .ai_flags = AI_ADDRCONFIG };
    struct addrinfo *res = NULL, *pick = NULL;
    char port[8];
    snprintf(port, sizeof(port), "%u", g->port);
    int e = getaddrinfo(g->host, port, &hints, &res);
    for (struct addrinfo *a = e == 0 ? res : NULL; a; a = a->ai_next)
        if ((a->ai_family == AF_INET || a->ai_family == AF_INET6) && a->ai_addrlen <= sizeof(s->next_gw) &&
            (!pick || (a->ai_family == s->gw.ss_family && pick->ai_family != s->gw.ss_family)))
            pick = a;
    if (!pick) {
        snprintf(err, err_len, "cannot resolve gateway %s: %s", g->host,
                 e == 0 ? "no IPv4 or IPv6 address" : e == EAI_SYSTEM ? strerror(errno) : gai_strerror(e));
        if (res)
            freeaddrinfo(res);
        return M2MVPN_E_NETWORK;
    }
    memset(&s->next_gw, 0, sizeof(s->next_gw));
    memcpy(&s->next_gw, pick->ai_addr, pick->ai_addrlen);
    s->next_gw_len = pick->ai_addrlen;
    freeaddrinfo(res);
    char ifname[IF_NAMESIZE], a[INET6_ADDRSTRLEN];
    underlay_for(s, p, &s->next_gw, s->next_gw_len, ifname);
    if (strcmp(ifname, s->underlay) != 0) {
        snprintf(err, err_len, "gateway %s is reached through %s, the tunnel through %s", text,
                 ifname[0] ? ifname : "no interface", s->underlay[0] ? s->underlay : "no interface");
        return M2MVPN_E_STATE;
    }
    s->next_sock500 = ike_socket(s, &s->next_gw, s->next_gw_len, s->underlay);
    if (s->next_sock500 < 0) {
        snprintf(err, err_len, "cannot reach %s (%s): %s", text, addr_text(&s->next_gw, a, sizeof(a)),
                 strerror(errno));
        return M2MVPN_E_NETWORK;
    }
    core_io_add(s->loop, &s->next_io500, s->next_sock500, EPOLLIN, on_next_sock500, s);
    snprintf(s->next_gw_text, sizeof(s->next_gw_text), "%s", text);
    s->next_other_gw = true;
    return 0;
}

/* A second IKE SA next to the current one, with a full IKE_SA_INIT and
 * IKE_AUTH: a certificate file is read again (a renewed certificate is the
 * one sent), unless opening it anew needs a PIN; EAP uses the credentials
 * the tunnel was opened with (our copies). */
static int sys_reauth_start(void *arg, const profile *p, const conn_eap *eap, char *err, size_t err_len)
{
    conn_sys *s = arg;
    (void)eap;
    if (!s->sa || s->next || s->old || s->main_down || s->sock500 < 0 || !s->dp) {
        snprintf(err, err_len, "no established IKE SA alone to reauthenticate");
        return M2MVPN_E_STATE;
    }
    int rg = next_gateway_open(s, p, err, err_len);
    if (rg < 0)
        return rg;
    if (p != s->prof) { /* a profile switch: its trust anchors */
        pki_trust *t = NULL;
        int r = pki_trust_new(&t);
        for (size_t i = 0; r == 0 && i < p->n_ca; i++)
            r = pki_trust_add_file(t, p->ca[i], err, err_len);
        if (r < 0) {
            pki_trust_free(t);
            next_gateway_close(s);
            return r;
        }
        s->old_trust = s->trust;
        s->trust = t;
    }
    if (p->auth == PROFILE_AUTH_CERT && (s->cred || p != s->prof)) {
        cred_provider *cur = s->cred;
        char why[256] = "";
        s->cred = NULL;
        if (open_credential(s, p, why, sizeof(why)) == 0 && !cred_pin_needed(s->cred)) {
            s->old_cred = cur;
        } else if (p != s->prof || !cur) { /* another profile's key: it must open now */
            if (s->cred && cred_pin_needed(s->cred))
                snprintf(err, err_len, "the new profile's credential needs a PIN");
            else
                snprintf(err, err_len, "%s", why);
            cred_free(s->cred);
            s->cred = cur;
            cred_back(s);
            next_gateway_close(s);
            return M2MVPN_E_STATE;
        } else {
            if (why[0])
                LOG_INFO(s->log, "conn", "reauthentication with the credential in use (reading it anew: %s)",
                         why);
            cred_free(s->cred);
            s->cred = cur;
        }
    }
    /* The port-500 socket keeps the source address it was connected from:
     * after a roam (MOBIKE) the new IKE SA's IKE_SA_INIT must leave from the
     * current path, so a fresh one (the old SA talks on port 4500 only). */
    if (s->path_known) {
        struct sockaddr_storage cur;
        socklen_t cur_len = sizeof(cur);
        if (getsockname(s->sock500, (struct sockaddr *)&cur, &cur_len) < 0 ||
            !same_addr(&cur, &s->path.src)) {
            int rs = open_socket(s, err, err_len);
            if (rs < 0) {
                cred_back(s);
                next_gateway_close(s);
                return rs;
            }
        }
    }
    ike_config cfg;
    ike_config_fill(s, p, &cfg);
    cfg.reauth = true;
    if (s->next_other_gw) {
        cfg.local_len = sizeof(cfg.local);
        getsockname(s->next_sock500, (struct sockaddr *)&cfg.local, &cfg.local_len);
        memcpy(&cfg.remote, &s->next_gw, s->next_gw_len);
        cfg.remote_len = s->next_gw_len;
    }
    cfg.want_vip = s->has_vip;
    cfg.want_vip6 = s->has_vip6;
    memcpy(cfg.vip, s->vip, 4);
    memcpy(cfg.vip6, s->vip6, 16);
    ike_hooks hooks = { s, next_send, next_established, next_down, NULL, NULL, NULL, NULL, NULL };
    int r = ike_sa_new(s->loop, s->log, &cfg, &hooks, &s->next, err, err_len);
    if (r < 0) {
        s->next = NULL;
        cred_back(s);
        next_gateway_close(s);
        return r;
    }
    if (s->next_other_gw) {
        char a[INET6_ADDRSTRLEN];
        LOG_INFO(s->log, "conn", "switching from %s to gateway %s (%s): a new IKE SA next to the current one",
                 s->gw_text, s->next_gw_text, addr_text(&s->next_gw, a, sizeof(a)));
    } else {
        LOG_INFO(s->log, "conn", "reauthenticating with %s: a new IKE SA next to the current one", s->gw_text);
    }
    /* The gateway sends with the new CHILD SA as soon as its IKE_AUTH
     * response leaves: what arrives before we have read it waits. */
    esp_datapath_expect_spi(s->dp, ike_sa_child_spi_in(s->next));
    ike_sa_start(s->next); /* failures arrive through next_down */
    return 0;
}

/* The new IKE SA is up (during its callback): its CHILD SA takes the
 * traffic (installed as the sending SA; the old one still receives), the
 * new SA becomes the tunnel's, the old one is deleted. The virtual IPs
 * normally stay (asked for again); if the gateway gave others, the tunnel
 * takes them (a gap for connections bound to the old ones). */
static int sys_reauth_install(void *arg, const profile *p, const ike_child_result *r, char *err, size_t err_len)
{
    conn_sys *s = arg;
    if (!s->next) {
        snprintf(err, err_len, "no reauthentication under way");
        return M2MVPN_E_STATE;
    }
    uint32_t old_spi_in = s->spi_in; /* sys_child_install moves s->spi_in on */
    /* Another gateway: its CHILD SA's peer is that one (child_sa_config). */
    struct sockaddr_storage was_gw = s->gw;
    socklen_t was_gw_len = s->gw_len;
    if (s->next_other_gw) {
        s->gw = s->next_gw;
        s->gw_len = s->next_gw_len;
    }
    bool same = p == s->prof && r->has_vip == s->has_vip && r->has_vip6 == s->has_vip6 &&
                (!r->has_vip || memcmp(r->vip, s->vip, 4) == 0) &&
                (!r->has_vip6 || memcmp(r->vip6, s->vip6, 16) == 0);
    int rc;
    if (same) {
        char why[256] = "";
        esp_sa_config cfg;
        rc = child_sa_config(s, p, r, &cfg);
        if (rc == 0)
            rc = esp_datapath_install_sa(s->dp, &cfg, why, sizeof(why));
        secure_wipe(&cfg, sizeof(cfg));
        if (rc < 0)
            snprintf(err, err_len, "installing the new CHILD SA failed: %s", why);
    } else {
        /* Another profile (its routes), or other virtual IPs: the network
         * is set again in place (new routes before old ones go). */
        if (p == s->prof)
            LOG_WARN(s->log, "conn", "the gateway assigned other virtual IPs on reauthentication: the "
                     "tunnel takes them");
        const profile *was = s->prof;
        s->prof = p;
        rc = sys_child_install(s, p, r, err, err_len);
        if (rc < 0)
            s->prof = was;
    }
    if (rc < 0) {
        if (s->dp) /* whatever of it got in */
            esp_datapath_remove_sa(s->dp, r->spi_in);
        s->spi_in = old_spi_in;
        s->gw = was_gw;
        s->gw_len = was_gw_len;
        reauth_drop(s); /* the current SA carries on */
        return rc;
    }
    /* SA and network in place: what the gateway sent with it meanwhile goes
     * up now, judged by the new selectors. */
    if (s->dp)
        esp_datapath_release_parked(s->dp, r->spi_in);
    ike_sa *old = s->sa;
    s->old_spi_in = old_spi_in;
    s->spi_in = r->spi_in;
    s->sa = s->next;
    s->next = NULL;
    ike_hooks tunnel = { s, ike_send, ike_established, ike_down, ike_child_rekeyed, ike_child_deleted,
                         ike_ike_rekeyed, ike_addresses_updated, ike_send_to };
    ike_sa_set_hooks(s->sa, &tunnel);
    if (!s->next_other_gw) /* another gateway's list is not this one's */
        ike_sa_mobike_inherit(s->sa, old); /* the gateway's address list, if it did not send it again */
    ike_hooks replaced = { s, old_send, NULL, old_down, NULL, old_child_deleted, NULL, NULL, NULL };
    ike_sa_set_hooks(old, &replaced);
    s->old = old;
    if (s->next_other_gw) {
        /* The new gateway is the tunnel's: its port-500 socket, the path we
         * watch for roaming; the old SA's Delete still goes to the old one. */
        s->old_gw = was_gw;
        s->old_gw_len = was_gw_len;
        snprintf(s->gw_text, sizeof(s->gw_text), "%s", s->next_gw_text);
        close_socket(s);
        core_io_remove(s->loop, &s->next_io500);
        s->sock500 = s->next_sock500;
        s->next_sock500 = -1;
        s->next_other_gw = false;
        core_io_add(s->loop, &s->io500, s->sock500, EPOLLIN, on_sock500, s);
        char e[160];
        netwatch_path now;
        if (current_path(s, &now, e, sizeof(e)) == 0) { /* the new gateway's way: the baseline */
            s->path = now;
            s->path_known = true;
        }
    }
    ike_sa_describe(s->sa, s->ike_alg, sizeof(s->ike_alg), s->esp_alg, sizeof(s->esp_alg));
    if (s->main_down) { /* the gateway deleted it already */
        s->main_down = false;
        old_gone(s);
    } else {
        ike_sa_close(old); /* Delete; old_down follows */
    }
    return 0;
}

/* What holds our key and its certificate (never a PIN). */
static void fill_credential(conn_sys *s, conn_status *st)
{
    st->credential_source[0] = st->credential[0] = st->cert_subject[0] = '\0';
    st->cert_not_after = 0;
    if (!s->cred)
        return;
    snprintf(st->credential_source, sizeof(st->credential_source), "%s", cred_name(s->cred));
    cred_describe(s->cred, st->credential, sizeof(st->credential));
    if (!st->credential[0] && s->prof && s->prof->cert.file)
        snprintf(st->credential, sizeof(st->credential), "%s", s->prof->cert.file);
    pki_cert *const *chain;
    size_t n;
    char err[128];
    if (cred_chain(s->cred, &chain, &n, err, sizeof(err)) == 0 && n > 0) {
        pki_cert_subject_text(chain[0], st->cert_subject, sizeof(st->cert_subject));
        st->cert_not_after = pki_cert_not_after(chain[0]);
    }
}

static void sys_fill_status(void *arg, bool child, conn_status *st)
{
    conn_sys *s = arg;
    fill_credential(s, st);
    snprintf(st->ike_algorithms, sizeof(st->ike_algorithms), "%s", child ? s->ike_alg : "");
    snprintf(st->esp_algorithms, sizeof(st->esp_algorithms), "%s", child ? s->esp_alg : "");
    memset(st->dns, 0, sizeof(st->dns));
    if (!s->dp)
        return;
    esp_prefix dns[4];
    size_t n = child ? esp_datapath_dns(s->dp, dns, 4) : 0;
    for (size_t i = 0; i < n; i++)
        inet_ntop(dns[i].family, dns[i].addr, st->dns[i], sizeof(st->dns[i]));
    esp_datapath_counters k;
    esp_datapath_get_counters(s->dp, &k);
    st->counters = true;
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

static uint64_t sys_traffic(void *arg)
{
    conn_sys *s = arg;
    if (!s->dp)
        return 0;
    esp_datapath_counters k;
    esp_datapath_get_counters(s->dp, &k);
    return k.total.packets_in + k.total.packets_out;
}

static int64_t sys_wall_time(void *arg)
{
    (void)arg;
    return (int64_t)time(NULL);
}

static uint32_t sys_random(void *arg)
{
    (void)arg;
    uint32_t v = 0;
    if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v))
        v = (uint32_t)core_monotonic_ms() * 2654435761u; /* jitter only: no secret */
    return v;
}

/* ------------------------------------------------------------ lifecycle */

int conn_sys_new(core_loop *loop, core_log *log, conn_ops *ops)
{
    conn_sys *s = calloc(1, sizeof(*s));
    if (!s)
        return M2MVPN_E_NOMEM;
    s->loop = loop;
    s->log = log;
    s->sock500 = -1;
    s->next_sock500 = -1;
    s->race.s = s;
    s->race.sock = -1;
    core_timer_init(&s->hook_timer, reap_hook_runs, s);
    core_timer_init(&s->race_timer, race_start, s);
    core_timer_init(&s->reap_timer, reap, s);
    *ops = (conn_ops){
        .arg = s,
        .net_arm = sys_net_arm,
        .net_release = sys_net_release,
        .net_remove = sys_net_remove,
        .kill_switch_info = sys_kill_switch_info,
        .path_open = sys_path_open,
        .cred_load = sys_cred_load,
        .cred_pin = sys_cred_pin,
        .cred_release = sys_cred_release,
        .sa_start = sys_sa_start,
        .sa_close = sys_sa_close,
        .sa_release = sys_sa_release,
        .child_rekey = sys_child_rekey,
        .child_install = sys_child_install,
        .child_remove = sys_child_remove,
        .roam = sys_roam,
        .reauth_start = sys_reauth_start,
        .reauth_install = sys_reauth_install,
        .reauth_abort = sys_reauth_abort,
        .fill_status = sys_fill_status,
        .traffic = sys_traffic,
        .wall_time = sys_wall_time,
        .random = sys_random,
    };
    return 0;
}

void conn_sys_bind(void *arg, conn *c)
{
    conn_sys *s = arg;
    s->c = c;
}

void conn_sys_free(void *arg)
{
    conn_sys *s = arg;
    if (!s)
        return;
    core_timer_cancel(s->loop, &s->hook_timer);
    core_timer_cancel(s->loop, &s->race_timer);
    core_timer_cancel(s->loop, &s->reap_timer);
    race_drop(s);
    reap(s);
    netwatch_free(s->nw);
    dns_hook_reap(&s->dns_hook, s->log); /* what has finished; the rest is left to init */
    forget_eap(s);
    free(s);
}
