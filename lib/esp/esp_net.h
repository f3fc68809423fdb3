/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Internal to lib/esp: the TUN device and its network configuration through
 * libnl-route-3 (no `ip` processes): address, MTU, and the routes for the
 * protected prefixes in a routing table of our own, selected by a policy rule
 * (see esp.h "Kill switch"), plus the nftables table (esp_nft.h). Records
 * every address and route it adds so that removal takes away exactly those.
 * Engine thread only.
 */
#ifndef M2MVPN_ESP_NET_H
#define M2MVPN_ESP_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "esp.h"

/* Routes one apply wants: each prefix via the TUN, and its blackhole. */
#define ESP_NET_MAX_ROUTES (2 * ESP_MAX_TS)
/* Routes recorded: what an engine that died left (adopted, at most two
 * applies' worth: it may have died between adding the new routes and
 * removing the old ones) plus one apply's new routes, which are added before
 * the old ones go. So any change of prefixes finds room. */
#define ESP_NET_ADOPT_ROUTES (2 * ESP_NET_MAX_ROUTES)
#define ESP_NET_ROUTE_SLOTS (ESP_NET_ADOPT_ROUTES + ESP_NET_MAX_ROUTES)

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
    esp_net_route routes[ESP_NET_ROUTE_SLOTS];
    size_t n_routes;
    esp_prefix addr[2];         /* the addresses we added: [0] IPv4, [1] IPv6
                                 * (family 0 = none) */
    uint32_t mtu;
    uint32_t table;             /* our routing table = fwmark of our sockets */
    bool nft_active;            /* the nftables table is in place ... */
    esp_prefix nft_set[ESP_MAX_TS]; /* ... for these prefixes */
    size_t n_nft_set;
    esp_prefix nft_vips[2];       /* ... and these virtual IPs */
    size_t n_nft_vips;
    char nft_why[128];          /* ... or why not */
    bool routing_active;        /* table routes and rules of the last apply in place */
    bool ipv6_route_optional;   /* see esp_tunnel_net.ipv6_route_optional */
} esp_net;

/* Create or attach to the TUN `name` (IFF_TUN|IFF_NO_PI, non-blocking fd),
 * optionally persistent, optionally with IFF_VNET_HDR + TSO/CSUM offloads.
 * Adopts what an engine that died left in our routing table. Errors: TUN
 * (also: our table holds routes of another interface), SYSTEM. */
int esp_net_open(esp_net *n, const char *name, bool persistent, bool offload, char *err,
                 size_t err_len);

/* The TUN's MTU alone (the outer header changed). Errors: TUN. */
int esp_net_set_mtu(esp_net *n, uint32_t mtu, char *err, size_t err_len);

/* Bring the link up with `mtu`, set the addresses (at most one per family;
 * IPv6 ones without duplicate address detection, usable at once; one of a
 * family no longer given is removed), and make the routes in our
 * table equal to `want` (unicast via the TUN at `metric`, plus, with
 * `kill_switch`, blackholes at metric + ESP_KILL_SWITCH_METRIC_OFFSET and the
 * nftables table), and the policy rule for each family in `want` in place.
 * Adds the new ones before removing the old ones. `ike_ports`: UDP ports
 * our marked sockets send IKE to besides 500 and 4500 (esp_nft_apply). An
 * nftables error does not stop the routes and rules from being installed:
 * as much protection as can be is put in place, then the error is returned.
 * Errors: TUN with the netlink or nftables reason in err, INVAL (more than
 * ESP_MAX_TS). */
int esp_net_apply(esp_net *n, uint32_t mtu, const esp_prefix *addrs, size_t n_addrs,
                  const esp_prefix *want, size_t n_want, uint32_t metric, bool kill_switch,
                  const uint16_t *ike_ports, size_t n_ike_ports, char *err, size_t err_len);

/* Remove every route and the address this esp_net added, the policy rules
 * and the nftables table. */
void esp_net_remove_all(esp_net *n);

/* Close the fd. `drop_persist` clears TUNSETPERSIST first, so the device goes. */
void esp_net_close(esp_net *n, bool drop_persist);

#endif
