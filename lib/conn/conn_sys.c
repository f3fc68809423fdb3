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

typedef struct conn_sys {
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

    esp_datapath *dp;
    bool routes_set;              /* the profile's routes are in place */
    bool hold;
    uint32_t spi_in;              /* installed CHILD SA, 0 = none */
    cred_provider *cred;
    pki_trust *trust;
    ike_sa *sa;
    /* The EAP credentials the SA borrows (ike_config): our copies, kept
     * until the SA is released. */
    char *eap_user;
    char *eap_pass;               /* secure copy */
    size_t eap_pass_len;
    char ike_alg[96], esp_alg[96];
} conn_sys;

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

static void on_sock500(void *arg, uint32_t events)
{
    conn_sys *s = arg;
    (void)events;
    uint8_t buf[ESP_MAX_PACKET];
    for (int i = 0; i < 16; i++) {
        ssize_t n = recv(s->sock500, buf, sizeof(buf), 0);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                LOG_DBG(s->log, "conn", "port 500 socket: %s", strerror(errno));
            return;
        }
        if (s->sa)
            ike_sa_input(s->sa, buf, (size_t)n, false);
    }
}

static void on_ike_packet(void *arg, const uint8_t *data, size_t len, const struct sockaddr *from,
                          socklen_t from_len)
{
    conn_sys *s = arg;
    (void)from;
    (void)from_len;
    if (s->sa)
        ike_sa_input(s->sa, data, len, true);
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

static int ike_send(void *arg, const uint8_t *msg, size_t len, bool natt)
{
    conn_sys *s = arg;
    if (natt) {
        struct sockaddr_storage to = s->gw;
        if (to.ss_family == AF_INET)
            ((struct sockaddr_in *)&to)->sin_port = htons(ESP_UDP_PORT);
        else
            ((struct sockaddr_in6 *)&to)->sin6_port = htons(ESP_UDP_PORT);
        return esp_datapath_send_ike(s->dp, msg, len, (struct sockaddr *)&to, s->gw_len);
    }
    return send(s->sock500, msg, len, 0) < 0 ? M2MVPN_E_NETWORK : 0;
}

static void ike_established(void *arg, const ike_child_result *r)
{
    conn_sys *s = arg;
    conn_ike_established(s->c, r);
}

static void ike_down(void *arg, int err, ike_fault fault, const char *detail)
{
    conn_sys *s = arg;
    conn_post_ike_down(s->c, err, fault, detail);
}

/* The datapath's SA for a negotiated CHILD SA. The soft lifetime is jittered
 * (80..90 %) so that both sides rarely rekey at the same moment. */
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
    uint32_t life = p->esp.lifetime_s, jitter = 0;
    if (life / 10 && crypto_random(&jitter, sizeof(jitter)) == 0)
        jitter %= life / 10 + 1;
    cfg->lifetime.hard_seconds = life;
    cfg->lifetime.soft_seconds = life - life / 10 - jitter;
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

/* ------------------------------------------------------------ network */

/* Every prefix a profile may list gets its route, blackhole and nftables
 * element: the datapath's tables are sized from the profile's limit. */
_Static_assert(ESP_MAX_TS >= PROFILE_MAX_TS, "the datapath must protect every remote_ts");

/* The profile's traffic selectors as the prefixes the TUN routes cover. A
 * full tunnel (/0) stays one prefix: it is the default route of our own
 * routing table, which the rule consults before the main table. More than
 * the datapath can hold is an error, never a prefix silently left out. */
static int profile_to_routes(const profile_ts *ts, size_t n, esp_tunnel_net *net, char *err,
                             size_t err_len)
{
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
    struct sockaddr_in *any = (struct sockaddr_in *)&cfg.local;
    any->sin_family = AF_INET;
    any->sin_port = htons(ESP_UDP_PORT);
    cfg.local_len = sizeof(*any);
    snprintf(cfg.tun_name, sizeof(cfg.tun_name), "%s", p->tunnel.tun_name ? p->tunnel.tun_name : "m2m0");
    cfg.mtu = p->tunnel.mtu;
    if (cfg.mtu > ESP_MAX_TUN_MTU) {
        LOG_WARN(s->log, "conn", "tunnel.mtu %u is above what the datapath carries; using %u",
                 (unsigned)cfg.mtu, (unsigned)ESP_MAX_TUN_MTU);
        cfg.mtu = ESP_MAX_TUN_MTU;
    }
    cfg.kill_switch = p->tunnel.kill_switch;
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
        r = profile_to_routes(p->tunnel.remote_ts, p->tunnel.n_remote_ts, &net, err, err_len);
        if (r == 0)
            r = esp_datapath_set_network(s->dp, &net, err, err_len);
        s->routes_set = r == 0;
        if (r == 0 && p->tunnel.kill_switch) {
            esp_kill_switch_info ks;
            esp_datapath_kill_switch_info(s->dp, &ks);
            if (ks.nftables)
                LOG_INFO(s->log, "conn", "kill switch for profile %s in place: routing table %u "
                         "(rule priority %u), nftables table %s", p->name, ks.table,
                         ks.rule_priority, ks.nft_table);
            else
                LOG_WARN(s->log, "conn", "kill switch for profile %s in place: routing table %u "
                         "(rule priority %u); no nftables table (%s): a program that binds its "
                         "socket to another interface can bypass it", p->name, ks.table,
                         ks.rule_priority, ks.nft_why);
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

/* ---------------------------------------------------- path to a gateway */

static int resolve(conn_sys *s, const profile *p, size_t gw_index, char *err, size_t err_len)
{
    const profile_gateway *g = &p->gateways[gw_index % p->n_gateways];
    /* IPv4 only until IPv6 works end to end (the datapath's socket is IPv4). */
    struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_DGRAM, .ai_flags = AI_ADDRCONFIG };
    struct addrinfo *res = NULL;
    char port[8];
    snprintf(port, sizeof(port), "%u", g->port);
    snprintf(s->gw_text, sizeof(s->gw_text), "%s:%u", g->host, g->port);
    int e = getaddrinfo(g->host, port, &hints, &res);
    if (e != 0 || !res) {
        snprintf(err, err_len, "cannot resolve gateway %s: %s", g->host, gai_strerror(e));
        return M2MVPN_E_NETWORK;
    }
    memcpy(&s->gw, res->ai_addr, res->ai_addrlen);
    s->gw_len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
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
static bool reaches_through(conn_sys *s, const char *ifname)
{
    int fd = socket(s->gw.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd >= 0)
        mark_socket(s, fd);
    bool ok = fd >= 0 &&
              setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, ifname, (socklen_t)strlen(ifname)) == 0 &&
              connect(fd, (struct sockaddr *)&s->gw, s->gw_len) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* The interface towards the gateway, looked up anew before every attempt
 * (the device may have moved from Ethernet to LTE). IKE and ESP sockets are
 * bound to it (SO_BINDTODEVICE), so that routes into the TUN, a full tunnel
 * above all, cannot catch them. The kernel's own choice counts unless it is
 * the TUN; otherwise the first interface with a route to the gateway. */
static void find_underlay(conn_sys *s, const profile *p)
{
    const char *tun = p->tunnel.tun_name ? p->tunnel.tun_name : "m2m0";
    char found[IF_NAMESIZE] = "";
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) < 0)
        return;
    int fd = socket(s->gw.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd >= 0)
        mark_socket(s, fd);
    struct sockaddr_storage local;
    socklen_t len = sizeof(local);
    bool routed = fd >= 0 && connect(fd, (struct sockaddr *)&s->gw, s->gw_len) == 0 &&
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
            snprintf(found, sizeof(found), "%s", i->ifa_name);
    }
    for (struct ifaddrs *i = ifs; i && !found[0]; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != s->gw.ss_family || !(i->ifa_flags & IFF_UP) ||
            (i->ifa_flags & IFF_LOOPBACK) || strcmp(i->ifa_name, tun) == 0)
            continue;
        if (reaches_through(s, i->ifa_name))
            snprintf(found, sizeof(found), "%s", i->ifa_name);
    }
    freeifaddrs(ifs);
    if (strcmp(found, s->underlay) != 0) {
        LOG_INFO(s->log, "conn", "gateway %s is reached through %s", s->gw_text, found[0] ? found : "(no interface)");
        snprintf(s->underlay, sizeof(s->underlay), "%s", found);
    }
    /* The datapath's shared UDP socket follows (unbound if none was found). */
    if (s->dp)
        setsockopt(esp_datapath_udp_fd(s->dp), SOL_SOCKET, SO_BINDTODEVICE, s->underlay,
                   (socklen_t)strlen(s->underlay));
}

static int open_socket(conn_sys *s, char *err, size_t err_len)
{
    close_socket(s);
    s->sock500 = socket(s->gw.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->sock500 >= 0)
        mark_socket(s, s->sock500);
    if (s->sock500 >= 0 && s->underlay[0])
        setsockopt(s->sock500, SOL_SOCKET, SO_BINDTODEVICE, s->underlay, (socklen_t)strlen(s->underlay));
    if (s->sock500 < 0 || connect(s->sock500, (struct sockaddr *)&s->gw, s->gw_len) < 0) {
        snprintf(err, err_len, "cannot reach %s: %s", s->gw_text, strerror(errno));
        close_socket(s);
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
    if (r == 0)
        r = open_socket(s, err, err_len);
    return r;
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
    memset(&cfg, 0, sizeof(cfg));
    cfg.local_len = sizeof(cfg.local);
    getsockname(s->sock500, (struct sockaddr *)&cfg.local, &cfg.local_len);
    cfg.prof = p;
    memcpy(&cfg.remote, &s->gw, s->gw_len);
    cfg.remote_len = s->gw_len;
    cfg.cred = s->cred;
    cfg.trust = s->trust;
    cfg.eap_identity = s->eap_user;
    cfg.eap_password = s->eap_pass;
    cfg.eap_password_len = s->eap_pass_len;
    ike_hooks hooks = { s, ike_send, ike_established, ike_down, ike_child_rekeyed, ike_child_deleted,
                        ike_ike_rekeyed };
    int r = ike_sa_new(s->loop, s->log, &cfg, &hooks, &s->sa, err, err_len);
    if (r < 0)
        return r;
    LOG_INFO(s->log, "conn", "connecting to %s (profile %s)", s->gw_text, p->name);
    ike_sa_start(s->sa); /* failures arrive through on_down */
    return 0;
}

static void sys_sa_close(void *arg)
{
    conn_sys *s = arg;
    if (s->sa)
        ike_sa_close(s->sa);
}

static void sys_sa_release(void *arg)
{
    conn_sys *s = arg;
    ike_sa_free(s->sa);
    s->sa = NULL;
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
    net.has_vip = r->has_vip;
    net.vip.family = AF_INET;
    memcpy(net.vip.addr, r->vip, 4);
    net.vip.prefix_len = 32;
    /* Routes for everything the profile protects, not only what the gateway
     * granted (a subset, checked by lib/ike): traffic for the rest goes into
     * the TUN too and is not sent in plaintext. */
    rc = profile_to_routes(p->tunnel.remote_ts, p->tunnel.n_remote_ts, &net, why, sizeof(why));
    for (size_t i = 0; rc == 0 && i < r->n_dns && i < ESP_MAX_DNS; i++) {
        net.dns[i].family = AF_INET;
        memcpy(net.dns[i].addr, r->dns[i], 4);
        net.n_dns++;
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
    if (s->dp)
        esp_datapath_remove_sa(s->dp, spi_in);
    s->spi_in = 0;
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
    core_timer_init(&s->hook_timer, reap_hook_runs, s);
    *ops = (conn_ops){
        .arg = s,
        .net_arm = sys_net_arm,
        .net_release = sys_net_release,
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
    dns_hook_reap(&s->dns_hook, s->log); /* what has finished; the rest is left to init */
    forget_eap(s);
    free(s);
}
