/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TUN device, routes and policy rules through libnl-route-3. See esp.h for
 * the routing by policy and the kill switch this implements (our own table
 * behind a rule, persistent TUN, blackhole routes beneath the TUN routes,
 * the nftables table of esp_nft.c).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fib_rules.h>
#include <linux/if_addr.h>
#include <linux/if_tun.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <netlink/errno.h>
#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <netlink/route/link/inet6.h>
#include <netlink/route/route.h>
#include <netlink/route/rule.h>

#include <m2mvpn/m2mvpn.h>

#include "esp_net.h"
#include "esp_nft.h"

static void set_err(char *err, size_t err_len, const char *what, const char *why)
{
    if (err && err_len)
        snprintf(err, err_len, "%s: %s", what, why);
}

static int adopt_leftovers(esp_net *n, char *err, size_t err_len);

uint32_t esp_tunnel_table(const char *tun_name)
{
    const char *name = tun_name && *tun_name ? tun_name : "m2m0";
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const char *c = name; *c; c++)
        h = (h ^ (uint8_t)*c) * 16777619u;
    return ESP_TABLE_BASE | ((h ^ (h >> 8) ^ (h >> 16) ^ (h >> 24)) & ESP_TABLE_HASH_MASK);
}

int esp_net_open(esp_net *n, const char *name, bool persistent, bool offload, char *err,
                 size_t err_len)
{
    memset(n, 0, sizeof(*n));
    n->tun_fd = -1;
    snprintf(n->name, sizeof(n->name), "%s", name && *name ? name : "m2m0");
    n->table = esp_tunnel_table(n->name);

    n->nl = nl_socket_alloc();
    if (!n->nl)
        return M2MVPN_E_NOMEM;
    int rc = nl_connect(n->nl, NETLINK_ROUTE);
    if (rc < 0) {
        set_err(err, err_len, "netlink", nl_geterror(rc));
        nl_socket_free(n->nl);
        n->nl = NULL;
        return M2MVPN_E_TUN;
    }
    n->tun_fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (n->tun_fd < 0) {
        set_err(err, err_len, "/dev/net/tun", strerror(errno));
        goto fail;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI | (offload ? IFF_VNET_HDR : 0);
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", n->name);
    if (ioctl(n->tun_fd, TUNSETIFF, &ifr) < 0) {
        set_err(err, err_len, "TUNSETIFF", strerror(errno));
        goto fail;
    }
    snprintf(n->name, sizeof(n->name), "%s", ifr.ifr_name);
    if (offload && ioctl(n->tun_fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) < 0) {
        set_err(err, err_len, "TUNSETOFFLOAD", strerror(errno));
        goto fail;
    }
    if (persistent && ioctl(n->tun_fd, TUNSETPERSIST, 1) < 0) {
        set_err(err, err_len, "TUNSETPERSIST", strerror(errno));
        goto fail;
    }
    n->persistent = persistent;
    n->ifindex = (int)if_nametoindex(n->name);
    if (n->ifindex <= 0) {
        set_err(err, err_len, n->name, "no ifindex");
        goto fail;
    }
    if (adopt_leftovers(n, err, err_len) < 0) {
        /* Another interface's table: leave the device as it was. */
        esp_net_close(n, false);
        return M2MVPN_E_TUN;
    }
    return 0;
fail:
    esp_net_close(n, true);
    return M2MVPN_E_TUN;
}

static struct nl_addr *prefix_addr(const esp_prefix *p, bool with_prefix)
{
    size_t len = p->family == AF_INET ? 4 : 16;
    struct nl_addr *a = nl_addr_build(p->family, p->addr, len);
    if (a && with_prefix)
        nl_addr_set_prefixlen(a, p->prefix_len);
    return a;
}

static struct rtnl_route *build_route(const esp_net *n, const esp_net_route *r)
{
    struct rtnl_route *route = rtnl_route_alloc();
    struct nl_addr *dst = prefix_addr(&r->dst, true);
    if (!route || !dst)
        goto fail;
    rtnl_route_set_family(route, (uint8_t)r->dst.family);
    rtnl_route_set_table(route, n->table);
    rtnl_route_set_protocol(route, RTPROT_STATIC);
    rtnl_route_set_priority(route, r->metric);
    if (rtnl_route_set_dst(route, dst) < 0)
        goto fail;
    nl_addr_put(dst);
    dst = NULL;
    if (r->blackhole) {
        rtnl_route_set_type(route, RTN_BLACKHOLE);
        rtnl_route_set_scope(route, RT_SCOPE_UNIVERSE);
    } else {
        struct rtnl_nexthop *nh = rtnl_route_nh_alloc();
        if (!nh)
            goto fail;
        rtnl_route_nh_set_ifindex(nh, n->ifindex);
        rtnl_route_add_nexthop(route, nh);
        rtnl_route_set_type(route, RTN_UNICAST);
        rtnl_route_set_scope(route, RT_SCOPE_LINK);
    }
    return route;
fail:
    nl_addr_put(dst);
    rtnl_route_put(route);
    return NULL;
}

static bool prefix_eq(const esp_prefix *a, const esp_prefix *b)
{
    size_t len = a->family == AF_INET ? 4 : 16;
    return a->family == b->family && a->prefix_len == b->prefix_len &&
           memcmp(a->addr, b->addr, len) == 0;
}

static bool route_eq(const esp_net_route *a, const esp_net_route *b)
{
    return a->blackhole == b->blackhole && a->metric == b->metric && prefix_eq(&a->dst, &b->dst);
}

/* Is the route the kernel already has in our table for r's prefix and metric
 * one of ours (left by an earlier instance with the kill switch)? EEXIST says
 * only that some route with that prefix and metric exists: a foreign one
 * (into another interface) must not be taken for ours, or the protected
 * traffic would follow it. */
static bool existing_route_is_ours(esp_net *n, const esp_net_route *r)
{
    struct nl_cache *cache = NULL;
    if (rtnl_route_alloc_cache(n->nl, r->dst.family, 0, &cache) < 0)
        return false;
    struct nl_addr *want = prefix_addr(&r->dst, true);
    bool ours = false;
    for (struct nl_object *o = nl_cache_get_first(cache); o && want && !ours; o = nl_cache_get_next(o)) {
        struct rtnl_route *rt = (struct rtnl_route *)o;
        if (rtnl_route_get_table(rt) != n->table || rtnl_route_get_priority(rt) != r->metric ||
            !rtnl_route_get_dst(rt) || nl_addr_cmp(rtnl_route_get_dst(rt), want) != 0)
            continue;
        if (r->blackhole) {
            ours = rtnl_route_get_type(rt) == RTN_BLACKHOLE;
        } else {
            struct rtnl_nexthop *nh = rtnl_route_nexthop_n(rt, 0);
            ours = rtnl_route_get_type(rt) == RTN_UNICAST && rtnl_route_get_nnexthops(rt) == 1 && nh &&
                   rtnl_route_nh_get_ifindex(nh) == n->ifindex && !rtnl_route_nh_get_gateway(nh);
        }
    }
    nl_addr_put(want);
    nl_cache_free(cache);
    return ours;
}

/* A persistent TUN left by an earlier instance (kill switch, after a crash or
 * restart) still has that instance's address, and our table its routes. The
 * routes of our table are taken over as ours, so the next apply replaces
 * exactly what is no longer wanted and teardown removes them; the TUN's old
 * address is removed, so that it can never be picked as the source of new
 * traffic (the gateway may assign another one now). The blackholes stay
 * (they hold traffic) until a teardown, or are reused by apply. A route of
 * our table into another interface means that another TUN name maps to the
 * same table: refused, rather than mixing two tunnels' routes. */
static int adopt_leftovers(esp_net *n, char *err, size_t err_len)
{
    /* Addresses first: removing a device's last IPv4 address flushes its
     * IPv4 routes too (the blackholes hold the traffic meanwhile). */
    struct nl_cache *addrs = NULL;
    if (rtnl_addr_alloc_cache(n->nl, &addrs) == 0) {
        for (struct nl_object *o = nl_cache_get_first(addrs); o; o = nl_cache_get_next(o)) {
            struct rtnl_addr *a = (struct rtnl_addr *)o;
            /* IPv4, and IPv6 other than link-local (none is generated). */
            if (rtnl_addr_get_ifindex(a) == n->ifindex &&
                (rtnl_addr_get_family(a) == AF_INET ||
                 (rtnl_addr_get_family(a) == AF_INET6 && rtnl_addr_get_scope(a) != RT_SCOPE_LINK)))
                rtnl_addr_delete(n->nl, a, 0);
        }
        nl_cache_free(addrs);
    }
    struct nl_cache *cache = NULL;
    int rc = rtnl_route_alloc_cache(n->nl, AF_UNSPEC, 0, &cache);
    if (rc < 0) {
        set_err(err, err_len, "route dump", nl_geterror(rc));
        return M2MVPN_E_TUN;
    }
    for (struct nl_object *o = nl_cache_get_first(cache); o; o = nl_cache_get_next(o)) {
        struct rtnl_route *rt = (struct rtnl_route *)o;
        struct rtnl_nexthop *nh = rtnl_route_nexthop_n(rt, 0);
        struct nl_addr *dst = rtnl_route_get_dst(rt);
        if (rtnl_route_get_table(rt) != n->table || !dst || nl_addr_get_len(dst) > 16)
            continue;
        bool blackhole = rtnl_route_get_type(rt) == RTN_BLACKHOLE;
        if (!blackhole && (!nh || rtnl_route_nh_get_ifindex(nh) != n->ifindex)) {
            char other[IF_NAMESIZE] = "?";
            if (nh)
                if_indextoname((unsigned)rtnl_route_nh_get_ifindex(nh), other);
            snprintf(err, err_len, "routing table %u (ours for %s) holds a route into %s: "
                     "another TUN name maps to the same table, rename one", n->table, n->name,
                     other);
            nl_cache_free(cache);
            return M2MVPN_E_TUN;
        }
        if (n->n_routes >= ESP_NET_ADOPT_ROUTES) {
            /* More than an engine of ours leaves (two applies' worth): not
             * recorded, it could never be removed; it goes now, the routes
             * recorded (and the nftables table) hold the traffic. */
            rtnl_route_delete(n->nl, rt, 0);
            continue;
        }
        esp_net_route *r = &n->routes[n->n_routes++];
        memset(r, 0, sizeof(*r));
        r->dst.family = nl_addr_get_family(dst);
        memcpy(r->dst.addr, nl_addr_get_binary_addr(dst), nl_addr_get_len(dst));
        r->dst.prefix_len = (uint8_t)nl_addr_get_prefixlen(dst);
        r->blackhole = blackhole;
        r->metric = rtnl_route_get_priority(rt);
    }
    nl_cache_free(cache);
    return 0;
}

static int route_add(esp_net *n, const esp_net_route *r, char *err, size_t err_len, int *nl_rc)
{
    bool recorded = false;
    for (size_t i = 0; i < n->n_routes && !recorded; i++)
        recorded = route_eq(&n->routes[i], r);
    if (!recorded && n->n_routes >= ESP_NET_ROUTE_SLOTS) { /* cannot happen: see esp_net.h */
        set_err(err, err_len, "routes", "too many");
        return M2MVPN_E_TUN;
    }
    /* Added again even when recorded: the kernel drops a device's routes
     * when the link goes down, and they must come back with it. */
    struct rtnl_route *route = build_route(n, r);
    if (!route)
        return M2MVPN_E_NOMEM;
    int rc = rtnl_route_add(n->nl, route, NLM_F_EXCL);
    rtnl_route_put(route);
    if (nl_rc)
        *nl_rc = rc;
    /* EEXIST: adopted only if it is a leftover of ours (kill switch), so a
     * later teardown removes it; a foreign route is an error, not a success. */
    if (rc == -NLE_EXIST && !recorded && !existing_route_is_ours(n, r)) {
        char dst[INET6_ADDRSTRLEN] = "?";
        inet_ntop(r->dst.family, r->dst.addr, dst, sizeof(dst));
        snprintf(err, err_len, "a route to %s/%u with metric %u exists already in table %u "
                 "and is not ours: protected traffic would bypass the tunnel", dst,
                 r->dst.prefix_len, r->metric, n->table);
        return M2MVPN_E_TUN;
    }
    if (rc < 0 && rc != -NLE_EXIST) {
        char dst[INET6_ADDRSTRLEN] = "?";
        inet_ntop(r->dst.family, r->dst.addr, dst, sizeof(dst));
        snprintf(err, err_len, "adding the %s route to %s/%u in table %u: %s",
                 r->blackhole ? "blackhole" : "TUN", dst, r->dst.prefix_len, n->table,
                 nl_geterror(rc));
        return M2MVPN_E_TUN;
    }
    if (!recorded)
        n->routes[n->n_routes++] = *r;
    return 0;
}

/* ------------------------------------------------------------ rules */

/* Our rule for `family`: `not fwmark TABLE lookup TABLE` at
 * ESP_RULE_PRIORITY. libnl has no setter for the rule flags, so the request
 * is built by libnl and FIB_RULE_INVERT set in its header. */
static int rule_add(esp_net *n, int family)
{
    struct rtnl_rule *rule = rtnl_rule_alloc();
    if (!rule)
        return -NLE_NOMEM;
    rtnl_rule_set_family(rule, family);
    rtnl_rule_set_prio(rule, ESP_RULE_PRIORITY);
    rtnl_rule_set_mark(rule, n->table);
    rtnl_rule_set_mask(rule, 0xffffffffu);
    rtnl_rule_set_table(rule, n->table);
    rtnl_rule_set_action(rule, FR_ACT_TO_TBL);
    struct nl_msg *msg = NULL;
    int rc = rtnl_rule_build_add_request(rule, NLM_F_EXCL, &msg);
    rtnl_rule_put(rule);
    if (rc < 0)
        return rc;
    struct fib_rule_hdr *frh = nlmsg_data(nlmsg_hdr(msg));
    frh->flags |= FIB_RULE_INVERT;
    rc = nl_send_auto_complete(n->nl, msg);
    nlmsg_free(msg);
    if (rc < 0)
        return rc;
    return nl_wait_for_ack(n->nl);
}

/* One dump of the rules of `family` that look up our table: is ours among
 * them, and copies of the others (to delete). libnl's rule object has no
 * getter for the flags, so the dump is read raw: FIB_RULE_INVERT decides
 * whether `fwmark T lookup T` is ours (not fwmark: everything but our own
 * sockets into the tunnel) or its opposite (only our own sockets: protected
 * traffic would go to main). */
#define RULE_SCAN_MAX 8
typedef struct rule_scan {
    uint32_t table;
    int family;
    bool ours;
    struct nl_msg *other[RULE_SCAN_MAX];
    size_t n_other;
} rule_scan;

static bool rule_is_ours(const rule_scan *sc, const struct fib_rule_hdr *frh, struct nlattr **tb)
{
    /* Selectors we do not set (addresses, interfaces, ports, uid, l3mdev)
     * make it a narrower rule, not ours. */
    static const int foreign[] = { FRA_SRC, FRA_DST, FRA_IIFNAME, FRA_OIFNAME, FRA_GOTO,
                                   FRA_FLOW, FRA_L3MDEV, FRA_UID_RANGE, FRA_IP_PROTO,
                                   FRA_SPORT_RANGE, FRA_DPORT_RANGE, FRA_TUN_ID };
    for (size_t i = 0; i < sizeof(foreign) / sizeof(foreign[0]); i++)
        if (tb[foreign[i]])
            return false;
    /* These two are dumped always, with -1 for "not set". */
    if ((tb[FRA_SUPPRESS_PREFIXLEN] && nla_get_u32(tb[FRA_SUPPRESS_PREFIXLEN]) != 0xffffffffu) ||
        (tb[FRA_SUPPRESS_IFGROUP] && nla_get_u32(tb[FRA_SUPPRESS_IFGROUP]) != 0xffffffffu))
        return false;
    return frh->family == sc->family && (frh->flags & FIB_RULE_INVERT) &&
           frh->action == FR_ACT_TO_TBL && frh->src_len == 0 && frh->dst_len == 0 &&
           frh->tos == 0 && tb[FRA_PRIORITY] && nla_get_u32(tb[FRA_PRIORITY]) == ESP_RULE_PRIORITY &&
           tb[FRA_FWMARK] && nla_get_u32(tb[FRA_FWMARK]) == sc->table && tb[FRA_FWMASK] &&
           nla_get_u32(tb[FRA_FWMASK]) == 0xffffffffu;
}

static int rule_scan_cb(struct nl_msg *msg, void *arg)
{
    rule_scan *sc = arg;
    struct nlmsghdr *h = nlmsg_hdr(msg);
    struct nlattr *tb[FRA_MAX + 1];
    if (h->nlmsg_type != RTM_NEWRULE || nlmsg_parse(h, sizeof(struct fib_rule_hdr), tb, FRA_MAX, NULL) < 0)
        return NL_OK;
    const struct fib_rule_hdr *frh = nlmsg_data(h);
    uint32_t table = tb[FRA_TABLE] ? nla_get_u32(tb[FRA_TABLE]) : frh->table;
    if (table != sc->table || frh->family != sc->family)
        return NL_OK;
    if (!sc->ours && rule_is_ours(sc, frh, tb)) {
        sc->ours = true;
    } else if (sc->n_other < RULE_SCAN_MAX) {
        struct nl_msg *copy = nlmsg_convert(h);
        if (copy)
            sc->other[sc->n_other++] = copy;
    }
    return NL_OK;
}

static int rule_dump(esp_net *n, rule_scan *sc)
{
    struct nl_cb *base = nl_socket_get_cb(n->nl);
    struct nl_cb *cb = base ? nl_cb_clone(base) : NULL;
    nl_cb_put(base);
    if (!cb)
        return -NLE_NOMEM;
    nl_cb_set(cb, NL_CB_VALID, NL_CB_CUSTOM, rule_scan_cb, sc);
    struct rtgenmsg gen = { .rtgen_family = (unsigned char)sc->family };
    int rc = nl_send_simple(n->nl, RTM_GETRULE, NLM_F_DUMP, &gen, sizeof(gen));
    if (rc >= 0)
        rc = nl_recvmsgs(n->nl, cb);
    nl_cb_put(cb);
    return rc < 0 ? rc : 0;
}

/* Delete the rule a dump gave: the same message as a deletion. The kernel
 * deletes the first rule matching its selectors, which ignores the flags: an
 * inverted twin may go instead, and is added again by the caller. */
static void rule_delete_raw(esp_net *n, struct nl_msg *m)
{
    struct nlmsghdr *h = nlmsg_hdr(m);
    h->nlmsg_type = RTM_DELRULE;
    h->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    h->nlmsg_seq = NL_AUTO_SEQ;
    h->nlmsg_pid = NL_AUTO_PORT;
    if (nl_send_auto_complete(n->nl, m) >= 0)
        nl_wait_for_ack(n->nl);
}

/* Make sure our rule for `family` is there, and only it: an engine that
 * died leaves it; any other rule that looks up our table (another shape, a
 * non-inverted twin, another mask) is removed. */
static int rule_ensure(esp_net *n, int family, char *err, size_t err_len)
{
    int rc = 0;
    bool ours = false;
    /* Each pass deletes what it saw besides ours; a few passes at most
     * (deleting may take ours instead of its twin, see above). */
    for (int pass = 0; pass < 2 * RULE_SCAN_MAX && rc == 0; pass++) {
        rule_scan sc = { .table = n->table, .family = family };
        rc = rule_dump(n, &sc);
        ours = sc.ours;
        for (size_t i = 0; i < sc.n_other; i++) {
            if (rc == 0)
                rule_delete_raw(n, sc.other[i]);
            nlmsg_free(sc.other[i]);
        }
        if (rc == 0 && sc.n_other == 0)
            break;
        if (rc == 0 && pass == 2 * RULE_SCAN_MAX - 1)
            rc = -NLE_EXIST; /* rules that will not go */
    }
    if (rc == 0 && !ours)
        rc = rule_add(n, family);
    if (rc < 0) {
        snprintf(err, err_len, "policy rule (%s, priority %u, table %u): %s",
                 family == AF_INET ? "IPv4" : "IPv6", ESP_RULE_PRIORITY, n->table, nl_geterror(rc));
        return M2MVPN_E_TUN;
    }
    return 0;
}

/* Every rule, of any family, that looks up our table. */
static void rules_remove(esp_net *n)
{
    struct nl_cache *cache = NULL;
    if (rtnl_rule_alloc_cache(n->nl, AF_UNSPEC, &cache) < 0)
        return;
    for (struct nl_object *o = nl_cache_get_first(cache); o; o = nl_cache_get_next(o)) {
        struct rtnl_rule *r = (struct rtnl_rule *)o;
        if (rtnl_rule_get_table(r) == n->table)
            rtnl_rule_delete(n->nl, r, 0);
    }
    nl_cache_free(cache);
}

static void route_del_at(esp_net *n, size_t i)
{
    struct rtnl_route *route = build_route(n, &n->routes[i]);
    if (route) {
        rtnl_route_delete(n->nl, route, 0);
        rtnl_route_put(route);
    }
    n->routes[i] = n->routes[--n->n_routes];
}

static int addr_change(esp_net *n, const esp_prefix *p, bool add, char *err, size_t err_len)
{
    struct rtnl_addr *a = rtnl_addr_alloc();
    struct nl_addr *local = prefix_addr(p, true);
    int rc = -NLE_NOMEM;
    if (a && local) {
        rtnl_addr_set_ifindex(a, n->ifindex);
        rtnl_addr_set_family(a, p->family);
        /* No duplicate address detection: the address is the gateway's
         * assignment, and a tentative address could not be used as a source
         * for about a second after each connect (a TUN is NOARP, which skips
         * DAD already; the flag says so for any device). */
        /* No prefix route either: routes come only from the selectors, in
         * our own table. */
        if (p->family == AF_INET6)
            rtnl_addr_set_flags(a, IFA_F_NODAD | IFA_F_NOPREFIXROUTE);
        rc = rtnl_addr_set_local(a, local);
        if (rc == 0)
            rc = add ? rtnl_addr_add(n->nl, a, 0) : rtnl_addr_delete(n->nl, a, 0);
    }
    nl_addr_put(local);
    rtnl_addr_put(a);
    if (add && rc == -NLE_EXIST)
        rc = 0;
    if (rc < 0) {
        set_err(err, err_len, add ? "address add" : "address delete", nl_geterror(rc));
        return M2MVPN_E_TUN;
    }
    return 0;
}

/* No IPv6 link-local address on the TUN: its router solicitations and MLD
 * reports would only be dropped (no SA covers them) and inflate the counters.
 * Must happen before the link goes up; kernels without IPv6 refuse, which is
 * fine. */
static void no_ipv6_autoconf(esp_net *n)
{
    struct rtnl_link *orig = NULL, *change = rtnl_link_alloc();
    if (change && rtnl_link_get_kernel(n->nl, n->ifindex, NULL, &orig) == 0 &&
        !(rtnl_link_get_flags(orig) & IFF_UP) &&
        rtnl_link_inet6_set_addr_gen_mode(change, rtnl_link_inet6_str2addrgenmode("none")) == 0)
        rtnl_link_change(n->nl, orig, change, 0);
    rtnl_link_put(orig);
    rtnl_link_put(change);
}

static int link_up(esp_net *n, uint32_t mtu, char *err, size_t err_len)
{
    no_ipv6_autoconf(n);
    struct rtnl_link *orig = NULL, *change = rtnl_link_alloc();
    int rc = change ? rtnl_link_get_kernel(n->nl, n->ifindex, NULL, &orig) : -NLE_NOMEM;
    if (rc == 0) {
        if (mtu)
            rtnl_link_set_mtu(change, mtu);
        rtnl_link_set_flags(change, IFF_UP);
        rc = rtnl_link_change(n->nl, orig, change, 0);
    }
    rtnl_link_put(orig);
    rtnl_link_put(change);
    if (rc < 0) {
        set_err(err, err_len, "link up/mtu", nl_geterror(rc));
        return M2MVPN_E_TUN;
    }
    if (mtu)
        n->mtu = mtu;
    return 0;
}

int esp_net_set_mtu(esp_net *n, uint32_t mtu, char *err, size_t err_len)
{
    return mtu == n->mtu ? 0 : link_up(n, mtu, err, err_len);
}

/* IPv6 in the kernel at all (booted without it: no /proc/sys/net/ipv6). */
static bool ipv6_kernel(void)
{
    return access("/proc/sys/net/ipv6", F_OK) == 0;
}

/* An IPv6 route the kernel refused because IPv6 is off (on the TUN: EACCES;
 * in the kernel: EAFNOSUPPORT), for prefixes that may go without one. */
static bool ipv6_refused(const esp_net *n, int nl_rc)
{
    return n->ipv6_route_optional && (nl_rc == -NLE_NOACCESS || nl_rc == -NLE_AF_NOSUPPORT);
}

static bool has_family(const esp_prefix *p, size_t n, int family)
{
    for (size_t i = 0; i < n; i++)
        if (p[i].family == family)
            return true;
    return false;
}

int esp_net_apply(esp_net *n, uint32_t mtu, const esp_prefix *addrs, size_t n_addrs,
                  const esp_prefix *want, size_t n_want, uint32_t metric, bool kill_switch,
                  const uint16_t *ike_ports, size_t n_ike_ports, char *err, size_t err_len)
{
    if (n_want > ESP_MAX_TS) {
        snprintf(err, err_len, "%zu prefixes to protect, at most %d", n_want, ESP_MAX_TS);
        return M2MVPN_E_INVAL;
    }
    for (size_t i = 0; i < n_want; i++) {
        if ((want[i].family != AF_INET && want[i].family != AF_INET6) ||
            want[i].prefix_len > (want[i].family == AF_INET ? 32 : 128)) {
            snprintf(err, err_len, "prefix %zu to protect is not an IPv4 or IPv6 prefix", i + 1);
            return M2MVPN_E_INVAL;
        }
    }
    /* The nftables table first: from then on nothing for the protected
     * prefixes leaves by another interface, whatever the routes are.
     * Unchanged prefixes (connected after armed: the profile's both times)
     * keep the table as it is: a change costs some 10 ms of parsing. An
     * error here does not stop the routes and rules below: as much of the
     * kill switch as can be goes in place, then the error is reported. */
    int rc, nft_rc = 0;
    char nft_err[256] = "";
    bool nft_same = n->nft_active && n->n_nft_set == n_want;
    for (size_t i = 0; nft_same && i < n_want; i++)
        nft_same = prefix_eq(&n->nft_set[i], &want[i]);
    size_t n_vips = n_addrs < 2 ? n_addrs : 2;
    nft_same = nft_same && n->n_nft_vips == n_vips;
    for (size_t i = 0; nft_same && i < n_vips; i++)
        nft_same = prefix_eq(&n->nft_vips[i], &addrs[i]);
    if (kill_switch && !nft_same) {
        n->n_nft_set = 0;
        n->n_nft_vips = 0;
        nft_rc = esp_nft_apply(n->name, n->table, want, n_want, ike_ports, n_ike_ports, addrs, n_vips,
                               &n->nft_active, n->nft_why, sizeof(n->nft_why), nft_err,
                               sizeof(nft_err));
        if (nft_rc == 0) {
            memcpy(n->nft_set, want, n_want * sizeof(*want));
            n->n_nft_set = n_want;
            memcpy(n->nft_vips, addrs, n_vips * sizeof(*addrs));
            n->n_nft_vips = n_vips;
        } else {
            snprintf(n->nft_why, sizeof(n->nft_why), "%s", nft_err);
        }
    } else if (!kill_switch && (n->nft_active || !n->nft_why[0])) {
        esp_nft_remove(n->name); /* a kill-switch profile's, on the same TUN before */
        n->nft_active = false;
        snprintf(n->nft_why, sizeof(n->nft_why), "kill switch off");
    }
    n->routing_active = false;
    rc = link_up(n, mtu, err, err_len);
    if (rc < 0)
        return rc;
    /* One address per family: a new one first, then the old one goes. */
    for (size_t f = 0; f < 2; f++) {
        int family = f == 0 ? AF_INET : AF_INET6;
        const esp_prefix *addr = NULL;
        for (size_t i = 0; i < n_addrs && !addr; i++)
            if (addrs[i].family == family)
                addr = &addrs[i];
        if (addr && prefix_eq(addr, &n->addr[f]))
            continue;
        if (addr) {
            rc = addr_change(n, addr, true, err, err_len);
            if (rc < 0)
                return rc;
        }
        if (n->addr[f].family)
            addr_change(n, &n->addr[f], false, NULL, 0);
        if (addr)
            n->addr[f] = *addr;
        else
            memset(&n->addr[f], 0, sizeof(n->addr[f]));
    }
    /* Desired set: each prefix via the TUN, and its blackhole beneath. */
    esp_net_route desired[ESP_NET_MAX_ROUTES];
    size_t n_desired = 0;
    for (size_t i = 0; i < n_want; i++) {
        desired[n_desired++] = (esp_net_route){ want[i], false, metric };
        if (kill_switch)
            desired[n_desired++] =
                (esp_net_route){ want[i], true, metric + ESP_KILL_SWITCH_METRIC_OFFSET };
    }
    /* Add first, then remove what is no longer wanted: no moment without a
     * route (the record has room for both: ESP_NET_ROUTE_SLOTS). A route
     * that cannot be added does not stop the others: each one that can be
     * is in place, then the first error is reported, and nothing is
     * removed (the old routes may be what covers it). */
    int route_rc = 0;
    for (size_t i = 0; i < n_desired; i++) {
        char one_err[256];
        int nl_rc = 0;
        rc = route_add(n, &desired[i], one_err, sizeof(one_err), &nl_rc);
        if (rc < 0 && desired[i].dst.family == AF_INET6 && ipv6_refused(n, nl_rc))
            continue; /* IPv6 off: the nftables set holds the prefix */
        if (rc < 0 && route_rc == 0) {
            route_rc = rc;
            snprintf(err, err_len, "%s", one_err);
        }
    }
    for (size_t i = n->n_routes; route_rc == 0 && i-- > 0;) {
        bool keep = false;
        for (size_t k = 0; k < n_desired && !keep; k++)
            keep = route_eq(&n->routes[i], &desired[k]);
        if (!keep)
            route_del_at(n, i);
    }
    /* The table is filled: now the rules that send protected traffic to it. */
    static const int families[] = { AF_INET, AF_INET6 };
    for (size_t i = 0; i < 2; i++) {
        if (!has_family(want, n_want, families[i]))
            continue;
        char one_err[256];
        rc = rule_ensure(n, families[i], one_err, sizeof(one_err));
        if (rc < 0 && families[i] == AF_INET6 && n->ipv6_route_optional && !ipv6_kernel())
            continue;
        if (rc < 0 && route_rc == 0) {
            route_rc = rc;
            snprintf(err, err_len, "%s", one_err);
        }
    }
    if (route_rc < 0)
        return route_rc;
    n->routing_active = true;
    if (nft_rc < 0) {
        snprintf(err, err_len, "%s", nft_err);
        return nft_rc;
    }
    return 0;
}

void esp_net_remove_all(esp_net *n)
{
    if (!n->nl)
        return;
    /* TUN routes first, blackholes last: traffic is never unprotected. */
    for (size_t i = n->n_routes; i-- > 0;)
        if (!n->routes[i].blackhole)
            route_del_at(n, i);
    while (n->n_routes)
        route_del_at(n, n->n_routes - 1);
    rules_remove(n);
    n->routing_active = false;
    esp_nft_remove(n->name);
    n->nft_active = false;
    n->n_nft_set = 0;
    for (size_t f = 0; f < 2; f++)
        if (n->addr[f].family)
            addr_change(n, &n->addr[f], false, NULL, 0);
    memset(n->addr, 0, sizeof(n->addr));
}

void esp_net_close(esp_net *n, bool drop_persist)
{
    if (n->tun_fd >= 0) {
        if (drop_persist && n->persistent)
            ioctl(n->tun_fd, TUNSETPERSIST, 0);
        close(n->tun_fd);
        n->tun_fd = -1;
    }
    if (n->nl) {
        nl_socket_free(n->nl);
        n->nl = NULL;
    }
}
