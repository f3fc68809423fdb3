/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Path watching for roaming (MOBIKE): the kernel's address and route
 * events (rtnetlink groups IPv4/IPv6 IFADDR and ROUTE, and LINK) on one
 * netlink socket in the engine's core_loop: no polling. A burst of new
 * addresses and routes is reported once, NETWATCH_SETTLE_MS after its
 * first event; a removal at once. The caller then asks where the way to its
 * gateway leads now (netwatch_route_to). Engine thread only.
 */
#ifndef M2MVPN_CONN_NETWATCH_H
#define M2MVPN_CONN_NETWATCH_H

#include <net/if.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/log.h"
#include "core/loop.h"

#define NETWATCH_SETTLE_MS 5

typedef struct netwatch netwatch;

/* Start watching; on_change(arg) runs from the loop after changes. Errors:
 * M2MVPN_E_NETWORK (no netlink socket: err says why), NOMEM. */
int netwatch_new(core_loop *loop, core_log *log, void (*on_change)(void *arg), void *arg, netwatch **ret,
                 char *err, size_t err_len);
void netwatch_free(netwatch *w);

/* The kernel's route to dst for a socket with fwmark `mark` (RTM_GETROUTE):
 * the source address it would use (port 0) and the output interface.
 * Errors: M2MVPN_E_NETWORK (no route: err says why). */
typedef struct netwatch_path {
    struct sockaddr_storage src;
    socklen_t src_len;
    int oif;
    char ifname[IF_NAMESIZE];
} netwatch_path;
int netwatch_route_to(const struct sockaddr_storage *dst, uint32_t mark, netwatch_path *ret, char *err,
                      size_t err_len);
/* Same source address and interface? */
bool netwatch_path_equal(const netwatch_path *a, const netwatch_path *b);
/* A new lookup of a watched path (lookup_ok: netwatch_route_to succeeded,
 * giving `now`) against the last path found (`last`, valid when *known).
 * A failed lookup keeps the last path: it is no reason to stop watching,
 * the next lookup that succeeds is compared with it (a way lost, then back
 * on another address, is a move). */
typedef enum netwatch_change {
    NETWATCH_SAME,  /* as before */
    NETWATCH_FIRST, /* the first path found: now `last` */
    NETWATCH_MOVED, /* another source or interface: now `last` */
    NETWATCH_LOST,  /* no way now; `last` kept */
} netwatch_change;
netwatch_change netwatch_track(netwatch_path *last, bool *known, bool lookup_ok, const netwatch_path *now);
/* "198.51.100.10 on eth0" */
void netwatch_path_text(const netwatch_path *p, char *out, size_t len);

#endif
