/* SPDX-License-Identifier: Apache-2.0 */
/* Address and route events from the kernel (libnl-route-3); see netwatch.h. */
#include "netwatch.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/rtnetlink.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include <netlink/attr.h>
#include <netlink/errno.h>
#include <netlink/msg.h>
#include <netlink/netlink.h>
#include <netlink/socket.h>

#include <m2mvpn/m2mvpn.h>

struct netwatch {
    core_loop *loop;
    core_log *log;
    struct nl_sock *sk;
    core_io io;
    core_timer settle;
    void (*on_change)(void *arg);
    void *arg;
};

/* Every message of the groups we joined is a change worth a look. */
static int on_event(struct nl_msg *msg, void *arg)
{
    netwatch *w = arg;
    /* Only the kernel (port 0) tells of addresses and routes: another
     * process that may send to our socket starts no path check. */
    if (nlmsg_get_src(msg)->nl_pid != 0)
        return NL_SKIP;
    int type = nlmsg_hdr(msg)->nlmsg_type;
    /* Something went: look at once (the sockets must not stay on a link
     * without our address); something came: let the burst settle. */
    if (type == RTM_DELADDR || type == RTM_DELROUTE || type == RTM_DELLINK)
        core_timer_arm(w->loop, &w->settle, 0);
    else if ((type == RTM_NEWADDR || type == RTM_NEWROUTE || type == RTM_NEWLINK) && !w->settle.armed)
        core_timer_arm(w->loop, &w->settle, NETWATCH_SETTLE_MS);
    return NL_OK;
}

static void on_readable(void *arg, uint32_t events)
{
    netwatch *w = arg;
    (void)events;
    for (int i = 0; i < 64; i++) {
        int r = nl_recvmsgs_default(w->sk);
        if (r == -NLE_AGAIN || r == 0)
            return;
        if (r < 0) {
            /* Overrun (ENOBUFS): events were lost; look anyway. */
            LOG_DBG(w->log, "conn", "netlink events: %s", nl_geterror(r));
            core_timer_arm(w->loop, &w->settle, NETWATCH_SETTLE_MS);
            if (r != -NLE_NOMEM)
                return;
        }
    }
}

static void settled(void *arg)
{
    netwatch *w = arg;
    w->on_change(w->arg);
}

int netwatch_new(core_loop *loop, core_log *log, void (*on_change)(void *arg), void *arg, netwatch **ret,
                 char *err, size_t err_len)
{
    netwatch *w = calloc(1, sizeof(*w));
    if (!w)
        return M2MVPN_E_NOMEM;
    w->loop = loop;
    w->log = log;
    w->on_change = on_change;
    w->arg = arg;
    core_timer_init(&w->settle, settled, w);
    int r = -NLE_NOMEM;
    w->sk = nl_socket_alloc();
    if (w->sk) {
        nl_socket_disable_seq_check(w->sk);
        nl_socket_modify_cb(w->sk, NL_CB_VALID, NL_CB_CUSTOM, on_event, w);
        r = nl_connect(w->sk, NETLINK_ROUTE);
    }
    if (r == 0)
        r = nl_socket_add_memberships(w->sk, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV4_ROUTE,
                                      RTNLGRP_IPV6_ROUTE, RTNLGRP_LINK, 0);
    if (r == 0)
        r = nl_socket_set_nonblocking(w->sk);
    if (r == 0 && core_io_add(loop, &w->io, nl_socket_get_fd(w->sk), EPOLLIN, on_readable, w) < 0)
        r = -NLE_FAILURE;
    if (r < 0) {
        snprintf(err, err_len, "cannot watch addresses and routes (netlink): %s", nl_geterror(r));
        if (w->sk)
            nl_socket_free(w->sk);
        free(w);
        return M2MVPN_E_NETWORK;
    }
    *ret = w;
    return 0;
}

void netwatch_free(netwatch *w)
{
    if (!w)
        return;
    core_timer_cancel(w->loop, &w->settle);
    core_io_remove(w->loop, &w->io);
    nl_socket_free(w->sk);
    free(w);
}

/* ----------------------------------------------------- RTM_GETROUTE */

typedef struct route_answer {
    netwatch_path *path;
    int family;
    bool got;
    int error;
} route_answer;

static int on_route(struct nl_msg *msg, void *arg)
{
    route_answer *a = arg;
    struct nlmsghdr *h = nlmsg_hdr(msg);
    if (nlmsg_get_src(msg)->nl_pid != 0 || h->nlmsg_type != RTM_NEWROUTE)
        return NL_OK;
    struct nlattr *tb[RTA_MAX + 1];
    if (nlmsg_parse(h, sizeof(struct rtmsg), tb, RTA_MAX, NULL) < 0)
        return NL_OK;
    size_t alen = a->family == AF_INET6 ? 16 : 4;
    if (!tb[RTA_PREFSRC] || nla_len(tb[RTA_PREFSRC]) != (int)alen || !tb[RTA_OIF])
        return NL_OK;
    netwatch_path *p = a->path;
    memset(&p->src, 0, sizeof(p->src));
    if (a->family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&p->src;
        in6->sin6_family = AF_INET6;
        memcpy(&in6->sin6_addr, nla_data(tb[RTA_PREFSRC]), 16);
        p->src_len = sizeof(*in6);
    } else {
        struct sockaddr_in *in = (struct sockaddr_in *)&p->src;
        in->sin_family = AF_INET;
        memcpy(&in->sin_addr, nla_data(tb[RTA_PREFSRC]), 4);
        p->src_len = sizeof(*in);
    }
    p->oif = (int)nla_get_u32(tb[RTA_OIF]);
    if (!if_indextoname((unsigned)p->oif, p->ifname))
        p->ifname[0] = '\0';
    a->got = true;
    return NL_OK;
}

static int on_route_error(struct sockaddr_nl *nla, struct nlmsgerr *e, void *arg)
{
    (void)nla;
    ((route_answer *)arg)->error = -e->error;
    return NL_STOP;
}

int netwatch_route_to(const struct sockaddr_storage *dst, uint32_t mark, netwatch_path *ret, char *err,
                      size_t err_len)
{
    memset(ret, 0, sizeof(*ret));
    int family = dst->ss_family;
    const void *addr = family == AF_INET6 ? (const void *)&((const struct sockaddr_in6 *)dst)->sin6_addr
                                          : (const void *)&((const struct sockaddr_in *)dst)->sin_addr;
    size_t alen = family == AF_INET6 ? 16 : 4;
    route_answer a = { .path = ret, .family = family };
    struct nl_sock *sk = nl_socket_alloc();
    struct nl_msg *msg = nlmsg_alloc_simple(RTM_GETROUTE, NLM_F_REQUEST);
    int r = sk && msg ? nl_connect(sk, NETLINK_ROUTE) : -NLE_NOMEM;
    struct rtmsg rtm = { .rtm_family = (unsigned char)family, .rtm_dst_len = (unsigned char)(alen * 8) };
    if (r == 0 && (nlmsg_append(msg, &rtm, sizeof(rtm), NLMSG_ALIGNTO) < 0 ||
                   nla_put(msg, RTA_DST, (int)alen, addr) < 0 || nla_put_u32(msg, RTA_MARK, mark) < 0))
        r = -NLE_NOMEM;
    if (r == 0) {
        nl_socket_modify_cb(sk, NL_CB_VALID, NL_CB_CUSTOM, on_route, &a);
        nl_socket_modify_err_cb(sk, NL_CB_CUSTOM, on_route_error, &a);
        r = nl_send_auto(sk, msg);
    }
    if (r >= 0)
        r = nl_recvmsgs_default(sk);
    nlmsg_free(msg);
    nl_socket_free(sk);
    char text[INET6_ADDRSTRLEN] = "?";
    inet_ntop(family, addr, text, sizeof(text));
    if (a.error) {
        snprintf(err, err_len, "no route to %s: %s", text, strerror(a.error));
        return M2MVPN_E_NETWORK;
    }
    if (r < 0 || !a.got) {
        snprintf(err, err_len, "no route to %s%s%s", text, r < 0 ? ": " : "", r < 0 ? nl_geterror(r) : "");
        return M2MVPN_E_NETWORK;
    }
    return 0;
}

bool netwatch_path_equal(const netwatch_path *a, const netwatch_path *b)
{
    return a->oif == b->oif && a->src_len == b->src_len && a->src.ss_family == b->src.ss_family &&
           memcmp(&a->src, &b->src, a->src_len) == 0;
}

netwatch_change netwatch_track(netwatch_path *last, bool *known, bool lookup_ok, const netwatch_path *now)
{
    if (!lookup_ok)
        return NETWATCH_LOST;
    if (*known && netwatch_path_equal(last, now))
        return NETWATCH_SAME;
    netwatch_change c = *known ? NETWATCH_MOVED : NETWATCH_FIRST;
    *last = *now;
    *known = true;
    return c;
}

void netwatch_path_text(const netwatch_path *p, char *out, size_t len)
{
    char a[INET6_ADDRSTRLEN] = "-";
    const void *addr = p->src.ss_family == AF_INET6 ? (const void *)&((const struct sockaddr_in6 *)&p->src)->sin6_addr
                                                    : (const void *)&((const struct sockaddr_in *)&p->src)->sin_addr;
    if (p->src_len)
        inet_ntop(p->src.ss_family, addr, a, sizeof(a));
    snprintf(out, len, "%s on %s", a, p->ifname[0] ? p->ifname : "?");
}
