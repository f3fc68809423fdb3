/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Internal to lib/esp: the TUN device and its network configuration through
 * libnl-route-3 (no `ip` processes). Records every address and route it adds
 * so that removal takes away exactly those. Engine thread only.
 */
#ifndef M2MVPN_ESP_NET_H
#define M2MVPN_ESP_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "esp.h"

#define ESP_NET_MAX_ROUTES (2 * ESP_MAX_TS)

typedef struct esp_net_route {
    esp_prefix dst;
    bool blackhole;
    uint32_t metric;
} esp_net_route;

typedef struct esp_net {
    int tun_fd;                 /* -1 when closed */
    int ifindex;
    char name[16];
    bool persistent;
    struct nl_sock *nl;
    esp_net_route routes[ESP_NET_MAX_ROUTES];
    size_t n_routes;
    esp_prefix addr;            /* the address we added (family 0 = none) */
    uint32_t mtu;
} esp_net;

/* Create or attach to the TUN `name` (IFF_TUN|IFF_NO_PI, non-blocking fd),
 * optionally persistent, optionally with IFF_VNET_HDR + TSO/CSUM offloads. Errors: TUN, SYSTEM. */
int esp_net_open(esp_net *n, const char *name, bool persistent, bool offload, char *err,
                 size_t err_len);

/* Bring the link up with `mtu`, set the address, and make the routes equal to
 * `want` (unicast via the TUN at `metric`, plus blackholes at metric +
 * ESP_KILL_SWITCH_METRIC_OFFSET when `blackholes`). Adds the new ones before
 * removing the old ones. Errors: TUN with the netlink reason in err. */
int esp_net_apply(esp_net *n, uint32_t mtu, const esp_prefix *addr,
                  const esp_prefix *want, size_t n_want, uint32_t metric, bool blackholes,
                  char *err, size_t err_len);

/* Remove every route and the address this esp_net added. */
void esp_net_remove_all(esp_net *n);

/* Close the fd. `drop_persist` clears TUNSETPERSIST first, so the device goes. */
void esp_net_close(esp_net *n, bool drop_persist);

#endif
